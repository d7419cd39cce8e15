"""Red cells and platelets of whole fields (hemaseg.redcells) on hand-made and painted smears with known truth."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from hemaseg.cells import iou_matrix_cells
from hemaseg.data.synthetic import SynthConfig, generate
from hemaseg.errors import SettingError
from hemaseg.metrics import matched_ious
from hemaseg.redcells import SmearConfig, find_smear_cells, red_cell_labels, stain_maps

RED, PINK, PURPLE, BACKGROUND = (205, 120, 140), (225, 170, 180), (120, 80, 170), (235, 235, 230)


def _field(h=120, w=160):
    return np.full((h, w, 3), BACKGROUND, np.uint8)


def _disc(img, cy, cx, r, colour, pallor=0.0):
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    img[d2 <= r * r] = colour
    if pallor:
        img[d2 <= (pallor * r) ** 2] = PINK  # a paler centre, as a biconcave red cell's
    return img


def test_two_touching_red_cells_with_pallor_are_two_and_a_platelet_is_a_platelet():
    img = _disc(_disc(_field(), 60, 50, 20, RED, pallor=0.45), 60, 88, 20, RED, pallor=0.45)  # centres 38 px apart
    _disc(img, 20, 130, 5, PURPLE)
    cells = find_smear_cells(img, 40.0)
    red, plt = cells.select(cells.labels == 1), cells.select(cells.labels == 2)
    assert len(red) == 2 and len(plt) == 1
    assert sorted(int(m.sum()) for m in red.masks)[0] > 0.8 * np.pi * 20**2  # the pale centre is part of the cell
    x0, y0, x1, y1 = plt.boxes[0]
    assert abs((x0 + x1) / 2 - 130) < 2 and abs((y0 + y1) / 2 - 20) < 2


def test_an_empty_field_has_no_cells_and_bad_settings_are_refused():
    assert len(find_smear_cells(_field(), 40.0)) == 0
    with pytest.raises(SettingError, match="red-cell diameter"):
        find_smear_cells(_field(), 0.0)
    with pytest.raises(SettingError, match="seed_distance"):
        SmearConfig(seed_distance=1.5)


def test_excluded_pixels_white_cells_are_not_red_cells():
    img = _disc(_disc(_field(), 60, 50, 20, RED), 60, 115, 20, RED)
    exclude = np.zeros(img.shape[:2], bool)
    exclude[30:95, 90:145] = True  # say the right one is a white cell found by the model
    d, p = stain_maps(img)
    lab = red_cell_labels(d, p, exclude)
    assert lab.max() == 1 and lab[60, 50] > 0 and lab[60, 115] == 0


def _painted(scale: float, seed: int):
    """A painted 240x320 field seen ``scale`` times magnified: the same cells, each ``scale`` times wider."""
    base = SynthConfig.wbc_field(240, 320)
    cfg = dataclasses.replace(base, height=round(240 * scale), width=round(320 * scale), red_radius=(17 * scale, 21 * scale),
                              white_radius=(34 * scale, 44 * scale), platelet_radius=(4 * scale, 7 * scale))
    return generate(np.random.default_rng(seed), cfg)


@pytest.mark.parametrize("scale", [0.75, 1.0, 1.6])
def test_painted_fields_counts_and_outlines_at_any_magnification(scale):
    from hemaseg.cells import Cells

    red_n, found_n, tp, plt_true, plt_found = 0, 0, 0, 0, 0
    for seed in range(3):
        s = _painted(scale, seed)
        truth = Cells.from_labels(s.labels, classes=s.classes)
        white = np.isin(s.labels, np.flatnonzero(s.classes == 2) + 1)
        found = find_smear_cells(s.image, 38.0 * scale, exclude=white)
        red_t, red_f = truth.select(truth.labels == 1), found.select(found.labels == 1)
        area = np.array([m.sum() for m in red_t.masks])
        red_t = red_t.select(area >= 0.3 * np.pi * (19 * scale) ** 2)  # countable: not hidden under others
        red_n, found_n = red_n + len(red_t), found_n + len(red_f)
        tp += len(matched_ious(iou_matrix_cells(red_t, red_f), 0.5))
        plt_true, plt_found = plt_true + int((truth.labels == 3).sum()), plt_found + int((found.labels == 2).sum())
    assert abs(found_n - red_n) <= 0.1 * red_n, (found_n, red_n)  # the count of visible red cells, within 10%
    assert tp >= 0.8 * red_n, (tp, red_n)  # and the outlines: most matched at IoU 0.5
    assert abs(plt_found - plt_true) <= max(2, 0.3 * plt_true), (plt_found, plt_true)


def test_segment_with_red_cells_counts_them_per_field_and_writes_them(tmp_path):
    import csv
    import json

    from hemaseg.cells import Cells
    from hemaseg.data.io import write_image
    from hemaseg.predict import ClassicalMethod, Method, SegmentConfig
    from hemaseg.segment import segment_files

    s = _painted(1.0, 2)
    path = write_image(tmp_path / "field.png", s.image)
    truth = Cells.from_labels(s.labels, classes=s.classes)

    class WhiteCells(Method):  # finds the painted white cells, as the bundled model would
        name, classes = "oracle", ("white_cell",)

        def __call__(self, image):
            white = truth.select(truth.labels == 2)
            white.labels = np.ones(len(white), np.int64)
            return white

    cfg = SegmentConfig(pixel_size=7.5 / 38, smear_cells=True, nuclei="off")
    summary = segment_files([path], WhiteCells(), tmp_path / "out", cfg, progress=False, log=lambda m: None)
    row = summary.rows[0]
    from hemaseg.redcells import counted_cells

    red_truth = truth.select(truth.labels == 1)  # counted as segment counts: slivers cut by the frame left out
    red_true = int(counted_cells(red_truth, ["red_cell"] * len(red_truth)).sum())
    assert red_true < len(red_truth)  # the painted field has slivers at its edges
    assert row["status"] == "ok" and abs(row["n_red_cells"] - red_true) <= 0.1 * red_true, (row["n_red_cells"], red_true)
    assert row["platelets_per_1000_red"] == round(1000 * row["n_platelets"] / row["n_red_cells"], 2)
    with open(tmp_path / "out" / "summary.csv") as fh:
        written = next(csv.DictReader(fh))
    assert int(written["n_red_cells"]) == row["n_red_cells"] and "white_per_1000_red" in written
    rows = list(csv.DictReader(open(tmp_path / "out" / "field_cells.csv")))
    assert sum(r["class"] == "red_cell" and r["counted"] == "True" for r in rows) == row["n_red_cells"] and "equivalent_diameter_um" in rows[0]
    assert sum(r["counted"] == "False" for r in rows) == row["n_cut_by_frame"] == int(written["n_cut_by_frame"]) > 0
    assert all(r["counted"] == "True" for r in rows if r["class"] == "white_cell")  # the method's cells all count
    from hemaseg.report import red_cell_summary

    red = red_cell_summary([written], [r for r in rows if r["class"] == "red_cell" and r["counted"] == "True"])
    assert red["unit"] == "um" and 6.0 < red["mean_diameter"] < 8.0, red  # painted 34-42 px at 7.5/38 um per px
    assert red["red_cells"] == row["n_red_cells"] and len(red["diameters"]) == row["n_red_cells"]
    elongation = [float(r["elongation"]) for r in rows if r["class"] == "red_cell"]
    assert 1.0 <= np.median(elongation) < 1.3  # painted red cells are round or nearly so
    assert all(r["elongation"] == "" and r["pallor_fraction"] == "" for r in rows if r["class"] == "white_cell")
    coco = json.loads((tmp_path / "out" / "predictions_coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["white_cell", "red_cell", "platelet"]
    assert row["n_white_cell"] == int((truth.labels == 2).sum()) and row["white_per_1000_red"] > 0
    plain = segment_files([path], ClassicalMethod("otsu"), tmp_path / "plain", SegmentConfig(nuclei="off"), progress=False,
                          log=lambda m: None)
    assert "n_red_cells" not in plain.rows[0]  # off unless asked for: the default outputs are as before
    # each red cell's morphology class (the bundled classifier) with its probability, in the CSV and COCO
    from hemaseg.redcells import MORPHOLOGY_CLASSES

    red_rows = [r for r in rows if r["class"] == "red_cell"]
    assert sum(g["cells"] for g in red["morphology"]) == sum(r["counted"] == "True" for r in red_rows)  # graded: counted ones
    assert all(r["morphology"] in MORPHOLOGY_CLASSES and 0 < float(r["morphology_confidence"]) <= 1 for r in red_rows)
    assert all(r["morphology"] == "" for r in rows if r["class"] != "red_cell")
    attrs = [a.get("attributes") for a in coco["annotations"]]
    assert sum(a is not None for a in attrs) == len(red_rows) and {a["morphology"] for a in attrs if a} == {r["morphology"] for r in red_rows}
    grades = {g["morphology"]: g for g in red["morphology"]}
    assert grades["normal"]["grade"] == ""
    refused = segment_files([path], ClassicalMethod("otsu"), tmp_path / "noscale", SegmentConfig(smear_cells=True, nuclei="off"),
                            progress=False, log=lambda m: None)
    assert refused.rows[0]["status"] == "failed" and "--pixel-size" in refused.rows[0]["error"]


def test_smear_quality_tells_a_thick_field_from_a_thin_one():
    from hemaseg.redcells import smear_quality

    hints = {}
    for kind, n in (("thin", 4), ("good", 22), ("thick", 70)):
        cfg = dataclasses.replace(SynthConfig.wbc_field(240, 320), red_cells=(n, n), white_cells=(0, 0), platelets=(0, 0))
        s = generate(np.random.default_rng(1), cfg)
        found = find_smear_cells(s.image, 38.0)
        hints[kind] = smear_quality(found, ["red_cell" if k == 1 else "platelet" for k in found.labels.tolist()])
    assert hints["thin"]["smear_hint"] == "thin" and hints["thick"]["smear_hint"] == "thick", hints
    assert hints["good"]["smear_hint"] == "", hints
    assert hints["thin"]["red_coverage"] < hints["good"]["red_coverage"] < hints["thick"]["red_coverage"]


def test_icsh_grades_follow_the_share_of_each_class():
    from hemaseg.redcells import icsh_grade, morphology_grades

    # size and colour: 1+ from 11 %, 2+ from 21 %, 3+ over 50 %; shapes from 5 %; schistocytes from any
    assert [icsh_grade("microcyte", p) for p in (10, 11, 20, 21, 50, 51)] == ["none", "1+", "1+", "2+", "2+", "3+"]
    assert [icsh_grade("teardrop", p) for p in (4, 5, 20.4, 21)] == ["none", "1+", "1+", "2+"]
    assert [icsh_grade("schistocyte", p) for p in (0, 0.1, 0.9, 1, 2, 2.1)] == ["none", "1+", "1+", "2+", "2+", "3+"]
    rows = {r["morphology"]: r for r in morphology_grades(["normal"] * 70 + ["spherocyte"] * 25 + ["schistocyte"] * 5)}
    assert (rows["spherocyte"]["percent"], rows["spherocyte"]["grade"]) == (25.0, "2+")
    assert (rows["schistocyte"]["percent"], rows["schistocyte"]["grade"]) == (5.0, "3+")
    assert (rows["target"]["cells"], rows["target"]["grade"]) == (0, "none")
    assert all(r["grade"] == "" and r["cells"] == 0 for r in morphology_grades([]))


CHULA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chula-rbc12"


def test_the_bundled_morphology_classifier_knows_real_red_cells():
    """On Chula fields held out of its training (benchmarks/real_sources.py's split), the classes it learned
    best (benchmarks/red_morphology.py: recall 0.93-1.0) are called right in most cells."""
    from hemaseg.cells import Cells
    from hemaseg.data.formats import list_images
    from hemaseg.data.io import read_image
    from hemaseg.redcells import bundled_morphology, red_morphology
    from hemaseg.scale import split_images

    clf = bundled_morphology()
    assert clf is not None and len(clf.classes) == 12 and clf.classes[0] == "normal"
    if not (CHULA / "labels").is_dir():
        pytest.skip(f"real data not found at {CHULA}")
    classes = ("normal", "macrocyte", "microcyte", "spherocyte", "target", "stomatocyte", "ovalocyte", "teardrop", "burr",
               "schistocyte", "uncategorised", "hypochromia", "elliptocyte")
    said, truth = [], []
    for path in split_images(list_images([CHULA]), 0.2, 0)[1][:30]:
        rgb = read_image(path)[..., :3].astype(np.uint8)
        pts = [p for p in np.loadtxt(CHULA / "labels" / f"{path.stem}.txt", ndmin=2).astype(int)
               if classes[p[2]] in ("target", "elliptocyte", "stomatocyte")]
        if not pts:
            continue
        h, w = rgb.shape[:2]  # a 7.5 um disc at each point stands for the found cell (0.1887 um per px: 40 px across)
        boxes = np.array([[max(0, x - 20), max(0, y - 20), min(w, x + 21), min(h, y + 21)] for x, y, _ in pts])
        masks = [(np.mgrid[y0:y1, x0:x1][0] - y) ** 2 + (np.mgrid[y0:y1, x0:x1][1] - x) ** 2 <= 400
                 for (x0, y0, x1, y1), (x, y, _) in zip(boxes, pts)]
        cells = Cells(h, w, boxes, masks, np.ones(len(pts)), np.ones(len(pts), np.int64))
        calls = red_morphology(clf, rgb, cells, ["red_cell"] * len(pts), 0.1887)
        said += [c["morphology"] for c in calls]
        truth += [classes[p[2]] for p in pts]
    assert len(truth) >= 40, len(truth)
    right = np.mean([a == b for a, b in zip(said, truth)])
    assert right >= 0.8, (right, len(truth))


def test_segment_red_cells_without_types_reports_the_red_cells_from_the_command_line(tmp_path):
    import json

    from typer.testing import CliRunner

    from hemaseg.cli import app
    from hemaseg.data.io import write_image

    write_image(tmp_path / "in" / "field.png", _painted(1.0, 4).image)
    runner = CliRunner()
    r = runner.invoke(app, ["segment", str(tmp_path / "in"), "--no-types", "--red-cells", "--pixel-size", str(7.5 / 38),
                            "--out", str(tmp_path / "out"), "--no-progress"])  # the bundled model's white cells, not typed
    assert r.exit_code == 0, r.output
    assert "red cells" in r.output and "graded:" in r.output and "differential of" not in r.output  # no white-cell types
    page = (tmp_path / "out" / "differential.html").read_text()
    assert "ICSH grade" in page and "Price-Jones curve" in page
    red = json.loads((tmp_path / "out" / "differential.json").read_text())["red_cells"]
    assert red["red_cells"] > 10 and sum(m["cells"] for m in red["morphology"]) == red["red_cells"]
    (tmp_path / "out" / "differential.html").unlink()
    r = runner.invoke(app, ["report", str(tmp_path / "out")])
    assert r.exit_code == 0 and (tmp_path / "out" / "differential.html").is_file(), r.output
    r = runner.invoke(app, ["segment", str(tmp_path / "in"), "--method", "otsu", "--out", str(tmp_path / "plain"), "--no-progress"])
    r = runner.invoke(app, ["report", str(tmp_path / "plain")])
    assert r.exit_code != 0 and "--red-cells" in r.output  # neither types nor red cells: told what to run


def test_cells_cut_by_the_frame_count_when_most_of_a_cell_is_in_view():
    from hemaseg.cells import Cells
    from hemaseg.redcells import FRAME_SHARE, counted_cells

    lab = np.zeros((60, 80), int)
    for k, (y, x) in enumerate([(20, 20), (20, 40), (40, 30)]):  # three whole red cells, 10 px squares
        lab[y: y + 10, x: x + 10] = k + 1
    lab[0:9, 60:70] = 4   # cut by the top edge, 9/10 of a cell in view: counted
    lab[52:60, 0:10] = 5  # cut, 8/10 in view: counted (FRAME_SHARE 0.8)
    lab[0:10, 0:7] = 6    # cut twice, 7/10: not counted
    lab[55:60, 70:80] = 7  # platelet-sized, but a platelet: measured against the platelets, not the red cells
    lab[30:34, 70:74] = 8  # a whole platelet of 16 px: the sliver of 50 px is larger than it, so it counts
    cells = Cells.from_labels(lab)
    names = ["red_cell"] * 6 + ["platelet"] * 2
    assert FRAME_SHARE == 0.8
    assert counted_cells(cells, names).tolist() == [True, True, True, True, True, False, True, True]
    assert counted_cells(cells, names, share=0.5).tolist() == [True] * 8
    assert counted_cells(cells, ["white_cell"] * 8).all()  # the method's own cells always count
    only_cut = cells.select([3, 5])  # no whole red cell to compare with: the cut ones against their median (80 px)
    assert counted_cells(only_cut, ["red_cell"] * 2).tolist() == [True, True]
    assert counted_cells(only_cut, ["red_cell"] * 2, share=0.9).tolist() == [True, False]
    assert counted_cells(cells.select([]), []).tolist() == []
    with pytest.raises(SettingError, match="share"):
        counted_cells(cells, names, share=0.0)


def test_a_cell_lying_on_another_is_two_cells_and_an_elliptocyte_one():
    img = _field(160, 260)
    for x in (30, 80, 130, 180, 230):  # single cells set the field's median cell
        _disc(img, 30, x, 20, RED, pallor=0.4)
    _disc(_disc(img, 110, 60, 20, RED, pallor=0.4), 110, 78, 18, RED, pallor=0.4)  # one on the other: no neck
    yy, xx = np.mgrid[:160, :260]
    img[((yy - 115) / 11) ** 2 + ((xx - 190) / 30) ** 2 <= 1] = RED  # an elliptocyte: long, but one cell's area
    off = find_smear_cells(img, 40.0, cfg=SmearConfig(pair_area=1e6))
    on = find_smear_cells(img, 40.0)
    assert len(off) == 7 and len(on) == 8, (len(off), len(on))  # the stacked pair split, the elliptocyte whole
    lab = on.label_image()
    assert lab[110, 50] != lab[110, 88] and lab[110, 50] > 0 and lab[115, 170] == lab[115, 210] > 0
    with pytest.raises(SettingError, match="pair_area"):
        SmearConfig(pair_area=0.9)


def test_the_report_gives_each_class_its_share_in_percent_with_one_decimal():
    from hemaseg.report import red_cell_summary, red_section

    rows = [{"equivalent_diameter_um": "7.5", "morphology": "normal"}] * 499 + [{"equivalent_diameter_um": "9.5", "morphology": "macrocyte"}]
    red = red_cell_summary([{"n_red_cells": "500", "n_platelets": "10", "n_white_cell": "1"}], rows)
    _, page = red_section(red, [{"image": "a.png", "n_red_cells": "500", "n_platelets": "10"}])
    assert "<td>macrocyte</td><td>1</td><td>0.2</td><td>none</td>" in page and "<td>99.8</td>" in page
    assert "0.2000" not in page and "20.0 platelets" in page
    assert "Sizes come from each field's scale" not in page  # no scale estimated: nothing to warn of
    red = red_cell_summary([{"n_red_cells": "500", "n_platelets": "10", "n_white_cell": "1"}], [{**r, "um_scale": "estimated"} for r in rows])
    assert red["scale_estimated"] and "Sizes come from each field's scale" in red_section(red, [])[1]


def test_a_case_whose_red_cells_the_classifier_is_mostly_unsure_of_is_flagged_doubtful(capsys):
    from pathlib import Path

    from hemaseg.cli import _say_report
    from hemaseg.redcells import UNSURE_BELOW, bundled_morphology
    from hemaseg.report import red_cell_summary, red_section

    assert UNSURE_BELOW == bundled_morphology().cfg.threshold  # the classifier's own threshold, not a second number
    fields = [{"n_red_cells": "100", "n_platelets": "5", "n_white_cell": "0"}]
    sure = [{"morphology": "normal", "morphology_confidence": "0.9"}] * 60
    unsure = [{"morphology": "schistocyte", "morphology_confidence": "0.4"}] * 40
    red = red_cell_summary(fields, sure + unsure)
    assert (red["morphology_unsure"], red["morphology_doubtful"]) == (0.4, False)  # as on the lab it learned from
    assert "classifier is unsure" not in red_section(red, [])[1]
    red = red_cell_summary(fields, sure[:40] + unsure + unsure[:20])  # unsure of 60%: another lab's images
    assert (red["morphology_unsure"], red["morphology_doubtful"]) == (0.6, True)
    assert "The red-cell classifier is unsure of 60% of these red cells" in red_section(red, [])[1]
    _say_report({"typed": 0, "red": red}, Path("out"))
    assert "DOUBTFUL: the classifier is unsure of 60% of these red cells" in capsys.readouterr().out
    red = red_cell_summary(fields, unsure[:20])  # too few cells to say
    assert red["morphology_unsure"] is None and not red["morphology_doubtful"]
