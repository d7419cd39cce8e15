import csv
import json

import numpy as np
import pytest
import torch
from conftest import save_png
from pycocotools.coco import COCO

from hemaseg.data.io import read_label_image
from hemaseg.predict import Method, SegmentConfig, filter_cells
from hemaseg.segment import segment_files
from hemaseg.cells import Cells


class Squares(Method):
    """A fake method: two square cells, the second touching the border, scores 0.9 and 0.6."""

    name = "squares"
    classes = ("red_cell", "white_cell")

    def __call__(self, image):
        h, w = image.shape[1:]
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, 5:15, 5:15] = 1
        masks[1, 0:4, 20:30] = 1
        return {"masks": masks, "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.6])}


def test_batch_writes_all_outputs_and_survives_a_bad_file(tmp_path):
    good = save_png(tmp_path / "in" / "good one.png", np.full((40, 40, 3), 200, np.uint8))
    bad = tmp_path / "in" / "bad.png"
    bad.write_bytes(b"broken")
    later = save_png(tmp_path / "in" / "later.bmp", np.full((40, 40, 3), 100, np.uint8))
    out = tmp_path / "out"
    summary = segment_files([good, bad, later], Squares(), out, SegmentConfig(pixel_size=0.5), progress=False, log=lambda s: None)
    assert [r["status"] for r in summary.rows] == ["ok", "failed", "ok"]
    assert summary.failed[0][0] == str(bad) and "bad.png" in summary.failed[0][1]
    lab = read_label_image(out / "good one_labels.png")
    assert lab.dtype == np.uint16 and set(np.unique(lab)) == {0, 1, 2}
    assert (out / "good one_overlay.png").is_file() and (out / "later_overlay.png").is_file()
    cells = list(csv.DictReader(open(out / "good one_cells.csv")))
    assert [c["class"] for c in cells] == ["white_cell", "red_cell"]
    assert float(cells[0]["area_px"]) == 100 and float(cells[0]["area_um2"]) == 25
    assert "nc_ratio" in cells[0] and cells[0]["nucleus_area_px"] == ""  # a uniform white cell: no nucleus found
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert rows[0]["n_white_cell"] == "1" and rows[0]["n_red_cell"] == "1"
    coco = COCO(str(out / "predictions_coco.json"))
    assert len(coco.getAnnIds()) == 4 and {c["name"] for c in coco.cats.values()} == {"red_cell", "white_cell"}
    ann = coco.anns[1]
    assert ann["score"] == 0.9 and coco.annToMask(ann).sum() == 100
    assert not list(out.glob("*.tmp*"))


def test_filter_cells_min_area_border_and_score_order():
    result = Squares()(torch.zeros(3, 40, 40))
    cells = Cells.from_result(result, 40, 40)
    kept = filter_cells(cells, SegmentConfig(drop_border=True))
    assert kept.scores.tolist() == [pytest.approx(0.9)] and kept.boxes.tolist() == [[5, 5, 15, 15]]
    kept = filter_cells(cells, SegmentConfig(min_area=50))
    assert len(kept) == 1
    kept = filter_cells(Cells.from_result({**result, "scores": torch.tensor([0.1, 0.7])}, 40, 40), SegmentConfig())
    assert kept.scores.tolist() == pytest.approx([0.7, 0.1]) and kept.labels.tolist() == [1, 2]


class Disk(Method):
    name = "disk"

    def __call__(self, image):
        h, w = image.shape[1:]
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        m = (((yy - 60.4) ** 2 + (xx - 70.2) ** 2) <= 25**2).to(torch.uint8)[None]
        return {"masks": m, "labels": torch.ones(1, dtype=torch.int64), "scores": torch.ones(1)}


def test_cells_csv_of_a_disk_matches_the_analytic_area_and_perimeter(tmp_path):
    import math

    img = save_png(tmp_path / "disk.png", np.zeros((120, 140, 3), np.uint8))
    segment_files([img], Disk(), tmp_path / "out", SegmentConfig(pixel_size=0.2), progress=False, log=lambda s: None)
    row = next(csv.DictReader(open(tmp_path / "out" / "disk_cells.csv")))
    assert float(row["area_px"]) == pytest.approx(math.pi * 25**2, rel=0.02)
    assert float(row["perimeter_px"]) == pytest.approx(2 * math.pi * 25, rel=0.02)
    assert float(row["area_um2"]) == pytest.approx(math.pi * 5**2, rel=0.02)
    assert float(row["perimeter_um"]) == pytest.approx(2 * math.pi * 5, rel=0.02)
    assert float(row["equivalent_diameter_um"]) == pytest.approx(10, rel=0.02)


class OneWhiteCell(Method):
    """A white cell with a dark nucleus, at a fixed place."""

    name = "one"
    classes = ("white_cell",)

    def __call__(self, image):
        h, w = image.shape[1:]
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        m = ((yy - 20) ** 2 + (xx - 20) ** 2 < 15**2).to(torch.uint8)[None]
        return {"masks": m, "labels": torch.ones(1, dtype=torch.int64), "scores": torch.ones(1)}


def test_typed_cells_and_the_differential_report(tmp_path):
    from hemaseg.classify import FEATURE_NAMES, LinearClassifier
    from hemaseg.report import write_differential

    n = len(FEATURE_NAMES)
    # a hand-made classifier: nucleus darkness decides; a pale cell stays unidentified
    coef = np.zeros((2, n))
    k = FEATURE_NAMES.index("nucleus_fraction")
    coef[0, k], coef[1, k] = 8.0, -8.0
    clf = LinearClassifier(("neutrophil", "lymphocyte"), FEATURE_NAMES, (0.0,) * n, (1.0,) * n,
                           tuple(map(tuple, coef)), (-1.0, 1.0), threshold=0.9)
    yy, xx = np.mgrid[:40, :40]
    dark = np.full((40, 40, 3), 200, np.uint8)
    dark[(yy - 20) ** 2 + (xx - 20) ** 2 < 10**2] = 60  # big nucleus: fraction 0.44
    files = [save_png(tmp_path / "in" / "a.png", dark), save_png(tmp_path / "in" / "b.png", np.full((40, 40, 3), 200, np.uint8))]
    segment_files(files, OneWhiteCell(), tmp_path / "out", progress=False, log=lambda s: None, classifier=clf)
    a = next(csv.DictReader(open(tmp_path / "out" / "a_cells.csv")))
    b = next(csv.DictReader(open(tmp_path / "out" / "b_cells.csv")))
    assert a["type"] == "neutrophil" and float(a["type_confidence"]) > 0.9
    assert b["type"] == "unidentified"  # no nucleus: fraction 0 -> p = 0.88 < 0.9, never forced
    d = write_differential(tmp_path / "out")
    assert d["counts"]["neutrophil"] == 1 and d["counts"]["unidentified"] == 1 and d["percent"]["neutrophil"] == 50
    page = (tmp_path / "out" / "differential.html").read_text()
    assert "Research use only" in page and "Gallery: neutrophil" in page and "https://" not in page
    assert json.loads((tmp_path / "out" / "differential.json").read_text())["total"] == 2


class CellAndNucleus(torch.nn.Module):
    """A fake two-class Mask R-CNN ('white_cell', 'nucleus'): one cell and its nucleus, and a stray
    nucleus outside every cell."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))  # predict() reads the device from the parameters

    def forward(self, images):
        h, w = images[0].shape[1:]
        m = torch.zeros(3, 1, h, w)
        m[0, 0, 5:25, 5:25] = 1  # cell
        m[1, 0, 10:14, 10:14] = 1  # its nucleus: 16 px
        m[2, 0, 30:34, 30:34] = 1  # nucleus of no cell
        return [{"masks": m, "labels": torch.tensor([1, 2, 2]), "scores": torch.tensor([0.9, 0.8, 0.7]),
                 "boxes": torch.zeros(3, 4)} for _ in images]


def test_a_model_with_a_nucleus_class_reports_cells_with_their_learned_nuclei(tmp_path):
    from hemaseg.predict import ModelMethod

    method = ModelMethod(CellAndNucleus(), ("white_cell", "nucleus"))
    assert method.classes == ("white_cell",) and method.nucleus_label == 2
    result = method(torch.full((3, 40, 40), 0.7))
    assert result.labels.tolist() == [1] and result.dense(nuclei=True).shape == (1, 40, 40)
    assert int(result.dense(nuclei=True).sum()) == 16
    kept = filter_cells(result, SegmentConfig(min_area=1))
    assert sum(n.sum() for n in kept.nuclei) == 16 and len(kept.nuclei) == len(kept) == 1

    img = save_png(tmp_path / "uniform.png", np.full((40, 40, 3), 180, np.uint8))  # split finds no nucleus here
    for mode, area in (("auto", "16"), ("split", "")):
        segment_files([img], method, tmp_path / mode, SegmentConfig(nuclei=mode), progress=False, log=lambda s: None)
        row = next(csv.DictReader(open(tmp_path / mode / "uniform_cells.csv")))
        assert row["nucleus_area_px"] == area, mode
        assert json.load(open(tmp_path / mode / "predictions_coco.json"))["categories"] == [{"id": 1, "name": "white_cell"}]
    with pytest.raises(ValueError, match="last class"):
        ModelMethod(CellAndNucleus(), ("nucleus", "white_cell"))
    with pytest.raises(ValueError, match="nuclei must be"):
        SegmentConfig(nuclei="learned")


def test_rle_in_box_equals_the_full_mask_rle():
    from pycocotools import mask as mask_utils

    from hemaseg.cells import encode_rle_in_box

    rng = np.random.default_rng(0)
    for h, w, box in [(30, 20, (0, 0, 20, 30)), (30, 20, (3, 5, 11, 30)), (7, 9, (8, 6, 9, 7)), (40, 40, (10, 0, 25, 40))]:
        x0, y0, x1, y1 = box
        local = rng.random((y1 - y0, x1 - x0)) > 0.4
        local[:, 0] = True  # runs that reach the bottom and continue at the top of the next column
        full = np.zeros((h, w), bool)
        full[y0:y1, x0:x1] = local
        dense = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
        assert encode_rle_in_box(local, box, h, w) == {"size": dense["size"], "counts": dense["counts"].decode("ascii")}, box


def test_a_large_image_is_tiled_into_the_same_cells_and_files(tmp_path):
    from test_tiling import Components, _disks

    image, truth = _disks(900, 1100, 200, seed=3)
    path = save_png(tmp_path / "field.png", image)
    quiet = dict(progress=False, log=lambda s: None)
    segment_files([path], Components(), tmp_path / "whole", SegmentConfig(tile=2048), **quiet)
    segment_files([path], Components(), tmp_path / "tiled", SegmentConfig(tile=300, overlap=100), **quiet)
    whole, tiled = (read_label_image(tmp_path / d / "field_labels.png") for d in ("whole", "tiled"))
    assert whole.max() == tiled.max() == truth.max() == 200
    assert np.array_equal(whole > 0, tiled > 0)
    rows = {d: list(csv.DictReader(open(tmp_path / d / "field_cells.csv"))) for d in ("whole", "tiled")}
    key = lambda r: (r["bbox_x1"], r["bbox_y1"], r["area_px"])  # noqa: E731
    assert sorted(map(key, rows["whole"])) == sorted(map(key, rows["tiled"]))
    coco = COCO(str(tmp_path / "tiled" / "predictions_coco.json"))
    for ann in coco.loadAnns(coco.getAnnIds())[:50]:
        assert np.array_equal(coco.annToMask(ann) > 0, tiled == ann["cell_id"]), ann["cell_id"]


class SquaresFailingOnWhite(Squares):
    """Squares, but a white image makes it fail - and with it any batch it is in."""

    def __call__(self, image):
        if float(image.mean()) > 0.99:
            raise RuntimeError("white image")
        return super().__call__(image)


def test_a_batch_spoilt_by_one_image_fails_only_that_image(tmp_path):
    files = [save_png(tmp_path / "in" / f"{k}.png", np.full((40, 40, 3), 255 if k == 1 else 100, np.uint8)) for k in range(3)]
    seen = []
    method = SquaresFailingOnWhite()
    method.many = lambda images: seen.append(len(images)) or Method.many(method, images)
    summary = segment_files(files, method, tmp_path / "out", SegmentConfig(batch=4), progress=False, log=lambda s: None)
    assert seen == [3]  # the three 40x40 images went in one call ...
    assert [r["status"] for r in summary.rows] == ["ok", "failed", "ok"]  # ... which failed, and each went alone
    assert summary.failed == [(str(files[1]), "RuntimeError: white image")]
    assert (tmp_path / "out" / "2_labels.png").is_file() and not (tmp_path / "out" / "1_labels.png").exists()
    # the batch is not a setting of the results: a folder done with one batch size is kept with another
    again = segment_files(files, Squares(), tmp_path / "out", SegmentConfig(batch=1), progress=False, log=lambda s: None)
    assert [r["status"] for r in again.rows] == ["ok", "ok", "ok"]
    with pytest.raises(ValueError, match="batch must be >= 1"):
        SegmentConfig(batch=0)
