"""Issue 7, point 1: bad inputs, each built here, each with a clear error naming the file and the
problem; in a batch, the batch goes on and the summary lists what failed (docs/robustness.md)."""

import csv
from pathlib import Path
import json
import os

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from typer.testing import CliRunner

from hemaseg.cli import app
from hemaseg.data.formats import DataError, list_images, open_dataset
from hemaseg.data.io import read_image
from hemaseg.model import default_model
from hemaseg.predict import ModelMethod, SegmentConfig
from hemaseg.segment import segment_files

from conftest import save_png, semantic_pair

runner = CliRunner()


@pytest.fixture(scope="module")
def bundled():
    return ModelMethod.from_checkpoint(default_model(), SegmentConfig())


def _rows(out):
    with open(out / "summary.csv", newline="") as f:
        return {r["image"]: r for r in csv.DictReader(f)}


def _smear(h=160, w=160):
    """A plain pink field with one dark purple disc: something a model may or may not call a cell."""
    img = np.full((h, w, 3), (235, 200, 210), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h // 2) ** 2 + (xx - w // 2) ** 2 < (min(h, w) // 5) ** 2] = (90, 40, 120)
    return img


def test_a_batch_of_odd_files_goes_on_and_lists_each_failure(tmp_path, bundled):
    folder = tmp_path / "données été" / "slide 1"  # unicode and spaces in the path
    good = save_png(folder / "good ü.png", _smear())
    truncated = folder / "truncated.png"
    save_png(truncated, _smear())
    truncated.write_bytes(truncated.read_bytes()[:200])
    (folder / "text.png").write_text("not an image at all")
    (folder / "notes.txt").write_text("mixed-in non-image files are ignored")
    (folder / ".DS_Store").write_bytes(b"\0\1\2")
    black = save_png(folder / "black.png", np.zeros((64, 64, 3), np.uint8))
    white = save_png(folder / "white.png", np.full((64, 64, 3), 255, np.uint8))
    pixel = save_png(folder / "pixel.png", np.full((1, 1, 3), 128, np.uint8))
    rgba = save_png(folder / "rgba.png", np.dstack([_smear(), np.full((160, 160), 255, np.uint8)]))
    gray = save_png(folder / "gray.png", _smear()[..., 0])
    deep = folder / "sixteen.tif"
    tifffile.imwrite(deep, _smear().astype(np.uint16) * 257)
    misnamed = folder / "really_png.jpg"  # a PNG behind a .jpg name: read by its content
    Image.fromarray(_smear()).save(misnamed, format="PNG")

    files = list_images([folder])
    assert {f.name for f in files} == {"good ü.png", "truncated.png", "text.png", "black.png", "white.png", "pixel.png",
                                       "rgba.png", "gray.png", "sixteen.tif", "really_png.jpg"}
    summary = segment_files(files, bundled, tmp_path / "out", progress=False, log=lambda s: None)
    rows = _rows(tmp_path / "out")
    assert len(rows) == len(files)  # one row per file, failed ones included
    failed = {p for p, _ in summary.failed}
    assert failed == {str(truncated), str(folder / "text.png")}
    for path in failed:
        assert rows[path]["status"] == "failed" and "cannot read image" in rows[path]["error"]
    for path in (good, black, white, pixel, rgba, gray, deep, misnamed):
        assert rows[str(path)]["status"] == "ok", rows[str(path)]
    for path in (white, pixel):
        assert rows[str(path)]["cells"] == "0"
    assert rows[str(black)]["cells"] == "0"  # the bundled model's degenerate frames: MODEL_CARD.md
    assert (tmp_path / "out" / "good ü_overlay.png").is_file()
    coco = json.loads((tmp_path / "out" / "predictions_coco.json").read_text())
    assert len(coco["images"]) == len(files) - 2


def test_the_cli_exits_non_zero_and_names_the_failures(tmp_path):
    folder = tmp_path / "in"
    save_png(folder / "ok.png", _smear())
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = runner.invoke(app, ["segment", str(folder), "--out", str(tmp_path / "out"), "--no-progress", "--no-types"])
    assert r.exit_code == 1
    assert "failed: " + str(folder / "bad.png") in r.output and "1 image(s) failed" in r.output
    assert r.output.count(str(folder / "bad.png")) == 1  # named once, not "bad.png: bad.png: ..."
    assert "segmented 1/2 images" in r.output


@pytest.mark.parametrize("case", ["empty folder", "only non-images", "missing path"])
def test_nothing_to_segment_is_a_clear_error(tmp_path, case):
    folder = tmp_path / "in"
    if case != "missing path":
        folder.mkdir()
    if case == "only non-images":
        (folder / "readme.txt").write_text("x")
    r = runner.invoke(app, ["segment", str(folder), "--out", str(tmp_path / "out"), "--no-progress"])
    assert r.exit_code == 2
    expected = "no such file or folder" if case == "missing path" else "no images found"
    assert expected in r.output and str(folder) in r.output
    assert not (tmp_path / "out").exists()


def _train_error(tmp_path, data) -> str:
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress"])
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "run" / "last.pt").exists()
    return r.output


def test_training_data_problems_name_the_file(tmp_path):
    d = tmp_path / "size"
    semantic_pair(d, "a")
    semantic_pair(d, "b")
    save_png(d / "b.png", np.zeros((10, 10), np.uint8))  # mask of another size than b.bmp
    with pytest.raises(DataError, match=r"b\.png: mask size 10x10 differs from image"):
        from hemaseg.data.formats import load_sample

        load_sample(open_dataset(d).refs[1], ("cell",))

    d = tmp_path / "unpaired"
    semantic_pair(d, "a")
    save_png(d / "lonely.bmp", np.zeros((8, 8, 3), np.uint8))  # an image without a mask
    save_png(d / "orphan_masks.png", np.zeros((8, 8), np.uint8))  # a mask without an image
    out = _train_error(tmp_path, d)
    assert "lonely.bmp" in out and "orphan" in out and "pairing problem" in out

    d = tmp_path / "values"
    semantic_pair(d, "a")
    mask = np.zeros((24, 32), np.uint8)
    mask[2:8, 2:8] = 77  # neither 0, 128 nor 255
    save_png(d / "a.png", mask)
    from hemaseg.data.formats import semantic_to_labels
    from hemaseg.data.io import read_label_image

    with pytest.raises(DataError, match=r"a\.png: unexpected mask values \{77: 36\}"):
        semantic_to_labels(read_label_image(d / "a.png"), stray="error", source=str(d / "a.png"))

    out = _train_error(tmp_path, tmp_path / "nowhere")
    assert "nowhere: no such file or folder" in out
    (tmp_path / "empty").mkdir()
    assert "no image/mask pairs found" in _train_error(tmp_path, tmp_path / "empty")


@pytest.mark.parametrize("bad, message", [
    ({"segmentation": [[1.0, 2.0, 3.0]]}, "has a bad segmentation"),  # a polygon needs >= 3 points
    ({"segmentation": [[2, 2, 10, 2]]}, "annotation 5 has a bad segmentation: polygon 0 has 4 numbers: a polygon "
                                        "needs x,y pairs, at least 3 points"),
    ({"segmentation": []}, "annotation 5 has a bad segmentation: has no polygon"),
    ({"segmentation": [[2, 2, float("nan"), 2, 10, 10]]}, r"polygon 0 has a coordinate that is not a finite number \(nan\)"),
    ({"segmentation": [[2, 2, 1e9, 2, 10, 10]]}, r"polygon 0 has a coordinate far outside the image \(20x20\)"),
    ({"segmentation": [[30, 30, 39, 30, 39, 39]]}, r"polygon 0 lies entirely outside the image \(20x20\)"),
    ({"segmentation": [[2, 2, 10, 2, 18, 2]]}, "annotation 5 covers no pixel of image a.png"),  # a line, no area
    ({"segmentation": {"size": [20, 20], "counts": [1, 2]}}, "RLE counts add up to 3 pixels, not 20x20 = 400"),
    ({"segmentation": "cell"}, "is a str, not polygons or an RLE"),
    ({"category_id": 99}, "unknown category_id 99"),
    ({"image_id": 7}, "annotation 5 refers to unknown image id 7"),
])
def test_coco_with_bad_polygons_or_ids_names_the_annotation(tmp_path, bad, message):
    from hemaseg.data.formats import load_sample

    save_png(tmp_path / "a.png", np.zeros((20, 20, 3), np.uint8))
    ann = {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]], "iscrowd": 0}
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}],
            "annotations": [{**ann, **bad}], "categories": [{"id": 1, "name": "cell"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=message) as err:
        src = open_dataset(tmp_path / "ann.json")
        load_sample(src.refs[0], src.classes, coco=src.coco)
    assert "ann.json" in str(err.value)


def test_mask_without_values_and_image_without_cells_train_as_empty(tmp_path):
    from hemaseg.data.formats import load_sample

    d = tmp_path / "d"
    semantic_pair(d, "a", cells=())
    image, target = load_sample(open_dataset(d).refs[0], ("cell",))
    assert image.shape == (3, 24, 32) and target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 24, 32)


def test_unreadable_and_odd_images_by_read_image(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.png: cannot read image"):
        read_image(tmp_path / "zero.png")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 6, 7, 8), np.uint8))
    with pytest.raises(DataError, match=r"stack\.tif: a stack of images \(5 along Q, 6 along Q; TIFF axes QQYX"):
        read_image(tmp_path / "stack.tif")
    with pytest.raises(DataError, match=r"zero\.png: cannot read image \(the file is empty\)"):
        read_image(tmp_path / "zero.png")
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((0, 5), np.uint8))
    with pytest.raises(DataError, match=r"flat\.tif: image is empty"):
        read_image(tmp_path / "flat.tif")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mask=arrays(np.uint8, st.tuples(st.integers(1, 20), st.integers(1, 20)),
                   elements=st.sampled_from([0, 0, 0, 128, 128, 255, 1, 77, 254])),
       other_size=st.booleans(), layout=st.sampled_from(["semantic", "labels"]))
def test_random_masks_through_the_loaders_give_a_target_or_a_named_error(tmp_path_factory, mask, other_size, layout):
    """Whatever the mask holds (stray values, specks, one pixel, another size than its image), loading it
    gives a valid contract target or a DataError naming the mask - never another exception."""
    from hemaseg.data.contract import validate_target
    from hemaseg.data.formats import load_sample

    d = tmp_path_factory.mktemp("random")
    h, w = mask.shape
    save_png(d / "a.bmp", np.full((h + int(other_size), w, 3), 200, np.uint8))
    if layout == "semantic":
        save_png(d / "a.png", mask)
    else:
        save_png(d / "labels" / "a.png", mask)  # instance label image: each value one cell
        save_png(d / "images" / "a.bmp", np.full((h + int(other_size), w, 3), 200, np.uint8))
        (d / "a.bmp").unlink()
    try:
        src = open_dataset(d)
        image, target = load_sample(src.refs[0], src.classes)
    except DataError as err:
        assert "a.png" in str(err) or str(d) in str(err)
        return
    assert not other_size  # a size mismatch is never loaded
    validate_target(image, target)
    assert target["masks"].shape[1:] == (h, w)


def test_evaluate_goes_on_past_a_bad_image_and_lists_it(tmp_path):
    d = tmp_path / "d"
    semantic_pair(d, "a", cells=[(2, 2, 12, 12)])
    semantic_pair(d, "b", cells=[(4, 4, 14, 16)])
    (d / "b.bmp").write_bytes(b"BM broken")
    r = runner.invoke(app, ["evaluate", "--data", str(d), "--out", str(tmp_path / "ev"), "--method", "otsu", "--no-progress"])
    assert r.exit_code == 1, r.output
    assert f"failed (otsu): {d / 'b.bmp'}: DataError" in r.output and "1 image(s) could not be scored" in r.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["images"] == 1 and summary["failed"] == 1
    with open(tmp_path / "ev" / "failed.csv", newline="") as f:
        assert [row["image"] for row in csv.DictReader(f)] == [str(d / "b.bmp")]
    assert (tmp_path / "ev" / "report.html").is_file()


def test_a_corrupt_training_image_stops_training_with_its_name(tmp_path):
    d = tmp_path / "d"
    for name in "abcd":
        semantic_pair(d, name, h=40, w=40, cells=[(4, 4, 20, 20)])
    (d / "c.bmp").write_bytes((d / "c.bmp").read_bytes()[:60])  # truncated after the header
    out = _train_error(tmp_path, d)
    assert f"error: {d / 'c.bmp'}: cannot read image" in out


_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.text(max_size=4),
                         st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1, 2, 20, 0, -1, 1e9, 1e308]))
_json_any = st.recursive(_json_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                         max_leaves=12)
_coord = st.one_of(st.floats(-40, 60), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20))
_polygons = st.lists(st.lists(_coord, max_size=10), max_size=3)
_rle = st.fixed_dictionaries({"size": st.one_of(st.just([20, 20]), _json_any),
                              "counts": st.one_of(st.lists(st.integers(-5, 400), max_size=5), st.text(max_size=6), _json_any)})


@settings(max_examples=int(os.environ.get("HEMASEG_FUZZ", 80)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.one_of(st.integers(0, 3), _json_scalar), min_size=3, max_size=3),
       size=st.one_of(st.just((20, 20)), st.tuples(_json_scalar, _json_scalar)),
       segs=st.lists(st.one_of(_polygons, _rle, _json_any), min_size=0, max_size=3),
       extra=st.dictionaries(st.sampled_from(["iscrowd", "bbox", "area", "category_id"]), _json_any, max_size=2))
def test_random_coco_documents_give_a_data_error_or_a_valid_sample(tmp_path, ids, size, segs, extra):
    from hemaseg.data.formats import load_sample

    save_png(tmp_path / "a.png", np.zeros((20, 20, 3), np.uint8))
    image = {"id": ids[0], "file_name": "a.png", "height": size[0], "width": size[1]}
    anns = [{"id": 10 + k, "image_id": ids[1], "category_id": ids[2], "segmentation": seg, "iscrowd": 0, **extra}
            for k, seg in enumerate(segs)]
    doc = {"images": [image], "annotations": anns, "categories": [{"id": ids[2], "name": "cell"}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    try:
        src = open_dataset(tmp_path / "ann.json")
        for ref in src.refs:
            img, target = load_sample(ref, src.classes, coco=src.coco)
            n = len(target["labels"])
            assert img.shape == (3, 20, 20) and target["masks"].shape == (n, 20, 20)
            assert torch.isfinite(target["boxes"]).all() and (target["masks"].flatten(1).sum(1) > 0).all()
    except DataError as err:
        assert "ann.json" in str(err)


def test_image_modes_and_pages_are_decided_by_content(tmp_path, monkeypatch):
    import hemaseg.data.io as io

    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")  # 4 samples: inks, not RGB + alpha
    assert tifffile.TiffFile(tmp_path / "cmyk.tif").pages[0].photometric == 5
    assert np.array_equal(read_image(tmp_path / "cmyk.tif"), rgb)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(int) - rgb).mean() < 8
    for pages in (2, 3, 4, 5):  # grayscale pages are never taken for colour channels
        tifffile.imwrite(tmp_path / f"p{pages}.tif", rgb[..., 0][None].repeat(pages, 0), photometric="minisblack")
        with pytest.raises(DataError, match=rf"p{pages}\.tif: a stack of images \({pages} along [IQ]"):
            read_image(tmp_path / f"p{pages}.tif")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert np.array_equal(read_image(tmp_path / "planar.tif"), rgb)
    save_png(tmp_path / "png_named.tif", rgb)  # read as what it is
    assert np.array_equal(read_image(tmp_path / "png_named.tif"), rgb)
    tifffile.imwrite(tmp_path / "white0.tif", 255 - rgb[..., 0], photometric="miniswhite")
    assert np.array_equal(read_image(tmp_path / "white0.tif"), rgb[..., 0])
    monkeypatch.setattr(io, "MAX_PIXELS", 100)
    for name in ("png_named.tif", "planar.tif"):
        with pytest.raises(DataError, match=rf"{name}: 16x12 = 0 Mpx is over hemaseg's limit of 0 Mpx"):
            read_image(tmp_path / name)


def test_a_folder_segmented_into_itself_is_not_read_back(tmp_path):
    d = tmp_path / "d"
    for k in range(2):
        save_png(d / f"{k}.png", _smear())
    (d / "gone.png").symlink_to(tmp_path / "nowhere.png")
    args = ["segment", str(d), "--out", str(d), "--method", "otsu", "--no-progress"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "skipped 1 file(s): hemaseg's own outputs and links to nothing (gone.png)" in first.output
    again = CliRunner().invoke(app, args + ["--overwrite"])
    assert again.exit_code == 0, again.output
    assert "skipped 3 file(s)" in again.output and "0_overlay.png" in again.output
    with open(d / "summary.csv", newline="") as f:
        assert [Path(r["image"]).name for r in csv.DictReader(f)] == ["0.png", "1.png"]
    r = CliRunner().invoke(app, ["segment", str(d / "gone.png"), "--out", str(tmp_path / "o"), "--method", "otsu"])
    assert r.exit_code == 2 and "gone.png: a link to" in r.output and "which does not exist" in r.output


def test_two_images_of_one_name_beside_one_mask_are_refused(tmp_path):
    d = tmp_path / "d"
    semantic_pair(d, "001")  # 001.bmp + 001.png (the mask)
    Image.open(d / "001.bmp").save(d / "001.jpg")
    with pytest.raises(DataError, match=r"images 001\.bmp, 001\.jpg share the name '001' - which goes with 001\.png\?"):
        open_dataset(d)


def test_nothing_to_learn_or_score_is_not_a_perfect_score(tmp_path, caplog):
    from hemaseg.engine import evaluate
    from hemaseg.evaluation import evaluate_method
    from hemaseg.predict import ClassicalMethod

    d = tmp_path / "empty"
    for k in "abcde":
        semantic_pair(d, k, cells=())  # masks without a single cell
    out = _train_error(tmp_path, d)
    assert "no cell in any of the 4 training images' annotations: nothing to learn" in out

    class Nothing(torch.nn.Module):  # finds no cell
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, images):
            return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
                     "masks": torch.zeros(0, 1, *im.shape[1:])} for im in images]

    src = open_dataset(d)
    from hemaseg.data.formats import load_sample

    batch = [load_sample(r, src.classes) for r in src.refs[:2]]
    scores = evaluate(Nothing().eval(), [([b[0] for b in batch], [b[1] for b in batch])])
    assert scores["images"] == 2 and all(np.isnan(scores[k]) for k in ("mean_iou", "mean_dice", "f1_50"))
    with pytest.raises(DataError, match="empty: no images to score"):
        evaluate_method(ClassicalMethod("otsu"), src, [], progress=False)
    import logging

    from hemaseg.cells import Cells

    nothing = {str(r.image): Cells.from_labels(np.zeros((24, 32), np.int32)) for r in src.refs}
    with caplog.at_level(logging.WARNING, logger="hemaseg.evaluation"):
        s = evaluate_method(ClassicalMethod("otsu"), src, src.refs, progress=False, predictions=nothing).summary
    assert s["images"] == 5 and s["nothing_scored"] == 5 and np.isnan(s["mean_iou"]) and np.isnan(s["f1_50"])
    assert "otsu: 5 of 5 images have no true and no found cell: their scores are n/a" in caplog.text


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    import os

    save_png(tmp_path / "in" / "a.png", _smear())
    (tmp_path / "file").write_text("x")
    for args, message in (
        (["segment", str(tmp_path / "in"), "--out", str(tmp_path / "file")], "file: is a file, not a folder"),
        (["segment", str(tmp_path / "in"), "--out", str(tmp_path / "file" / "sub")], "file is a file, not a folder"),
        (["evaluate", "--data", str(tmp_path / "in"), "--out", str(tmp_path / "file")], "is a file, not a folder"),
        (["fit-classifier", "--data", str(tmp_path / "in"), "--labels", "x.csv", "--out", str(tmp_path / "in")],
         "in: is a folder; name a file"),
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and message in " ".join(r.output.replace("│", " ").split()), (args, r.output)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        r = runner.invoke(app, ["segment", str(tmp_path / "in"), "--out", str(ro / "x"), "--method", "otsu"])
        assert r.exit_code == 2 and "cannot write in" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "in", "ro"] if (tmp_path / "ro").exists() else ["file", "in"]


@pytest.mark.parametrize("option, message", [
    (["--score-threshold", "2"], "score threshold must be between 0 and 1, got 2.0"),
    (["--score-threshold", "nan"], "score threshold must be between 0 and 1, got nan"),
    (["--diameter", "0.001"], "diameter must be 4-4000 px (a white cell's diameter in your images), got 0.001"),
    (["--diameter", "1e9"], "diameter must be 4-4000 px"),
    (["--pixel-size", "-0.1"], "pixel size must be 0.005-50 um/px, got -0.1"),
])
def test_option_ranges_are_checked_in_one_place_before_any_work(tmp_path, option, message):
    save_png(tmp_path / "in" / "a.png", _smear())
    r = runner.invoke(app, ["segment", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *option])
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_fit_classifier_refuses_a_pixel_size_that_is_no_size(tmp_path):
    save_png(tmp_path / "in" / "a.png", _smear())
    (tmp_path / "t.csv").write_text("image,type\na,lymphocyte\n")
    r = runner.invoke(app, ["fit-classifier", "--data", str(tmp_path / "in"), "--labels", str(tmp_path / "t.csv"),
                            "--pixel-size", "-0.1", "--out", str(tmp_path / "t.pt")])
    assert r.exit_code == 2 and "in: pixel size must be 0.005-50 um/px, got -0.1" in r.output, r.output


def test_ctrl_c_says_what_was_kept_and_how_to_go_on(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    for k in range(40):
        save_png(tmp_path / "in" / f"{k:02d}.png", _smear())
    cmd = [sys.executable, "-m", "hemaseg", "segment", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
           "--method", "otsu", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "out").exists() and time.time() < deadline:  # the batch has begun
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: every file already written is complete" in err and "Traceback" not in err
    assert len(list((tmp_path / "out").glob("*_result.json"))) < 40
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len((tmp_path / "out" / "summary.csv").read_text().splitlines()) == 41


def test_empty_model_files_and_missing_label_tables_get_plain_messages(tmp_path):
    from hemaseg.celltypes import CellTypeClassifier
    from hemaseg.classify import read_type_labels
    from hemaseg.model import CheckpointError, load_model

    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: not a readable checkpoint \(the file is empty\)"):
        load_model(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"empty\.pt: not a readable cell-type classifier \(the file is empty\)"):
        CellTypeClassifier.load(tmp_path / "empty.pt")
    with pytest.raises(DataError, match=r"nope\.csv: cannot read the type labels \(no such file or directory\)"):
        read_type_labels(tmp_path / "nope.csv")
    for text in ("", "image,type\n", "x\n"):  # empty, header only, one line: no table at all
        (tmp_path / "t.csv").write_text(text)
        with pytest.raises(DataError, match=r"t\.csv: no 'image,type' rows \(expected a header row"):
            read_type_labels(tmp_path / "t.csv")


def test_the_linear_classifier_says_what_is_wrong_in_its_own_words():
    from hemaseg.classify import FEATURE_NAMES, fit_linear

    X = np.random.default_rng(0).normal(size=(6, len(FEATURE_NAMES)))
    with pytest.raises(ValueError, match="6 labelled cells, all of one type \\(lymphocyte\\): a classifier needs cells of at least two types"):
        fit_linear(X, ["lymphocyte"] * 6)
    X[2, 0] = np.nan
    with pytest.raises(ValueError, match="1 of 6 cells have features that are not finite numbers"):
        fit_linear(X, ["lymphocyte", "monocyte"] * 3)


def test_pillow_bomb_check_is_said_as_the_size_limit(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    save_png(tmp_path / "big.png", _smear())
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses over 2x its limit, before hemaseg looks
    with pytest.raises(DataError, match=r"big\.png: over hemaseg's limit of 500 Mpx \(Image size"):
        read_image(tmp_path / "big.png")


def test_os_errors_are_said_in_words_not_errno():
    from hemaseg.cli import _says

    assert _says(FileNotFoundError(2, "No such file or directory", "a/x.csv")) == "a/x.csv: no such file or directory"
    assert _says(PermissionError(13, "Permission denied", "/r/out")) == "/r/out: permission denied"
    assert _says(OSError(28, "No space left on device")) == "no space left on device"
    assert _says(DataError("x.png: bad")) == "x.png: bad"


def test_serve_refuses_a_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "f.json").write_text("{}")
    r = runner.invoke(app, ["serve", "--data-dir", str(tmp_path / "f.json")])
    assert r.exit_code == 2 and "is a file, not a folder" in " ".join(r.output.replace("│", " ").split())


def test_a_split_or_run_that_is_not_hemasegs_is_named(tmp_path):
    from hemaseg.data.dataset import select_refs

    src = tmp_path / "d"
    semantic_pair(src, "a")
    for text, message in (("{bad", r"s.json: not a readable split.json of `hemaseg train` \(Expecting"),
                          ("[1, 2]", r"s.json: no 'val' list \(has \[\]\)"), ('{"train": []}', r"no 'val' list \(has \['train'\]\)")):
        (tmp_path / "s.json").write_text(text)
        with pytest.raises(DataError, match=message):
            select_refs(open_dataset(src).refs, src, tmp_path / "s.json")
    r = runner.invoke(app, ["evaluate", "--data", str(src), "--method", "otsu", "--run", str(tmp_path / "nope"),
                            "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "no metrics.csv in it" in " ".join(r.output.replace("│", " ").split())
    assert not (tmp_path / "e").exists()


def test_tables_that_are_not_utf8_text_are_named():
    import tempfile

    from hemaseg.data.boxes import read_yolo

    with tempfile.TemporaryDirectory() as d:
        bad = Path(d) / "ann.json"
        bad.write_bytes(b"\xff\xfe\x00binary")
        with pytest.raises(DataError, match=r"ann\.json: cannot read COCO JSON \(not UTF-8 text \(byte 0\)\)"):
            open_dataset(bad, "coco")
        with pytest.raises(DataError, match=r"ann\.json: cannot read YOLO labels \(not UTF-8 text"):
            read_yolo(bad, ["cell"], 10, 10)
        with pytest.raises(DataError, match=r"nope\.txt: cannot read YOLO labels \(no such file or directory\)$"):
            read_yolo(Path(d) / "nope.txt", ["cell"], 10, 10)


def test_every_refusal_is_a_hemaseg_error_the_cli_catches():
    from hemaseg.cli import FAILURES
    from hemaseg.engine import DivergedError
    from hemaseg.errors import HemasegError, SettingError
    from hemaseg.model import CheckpointError, check_fraction
    from hemaseg.train import RunExistsError

    for kind in (DataError, CheckpointError, SettingError, RunExistsError, DivergedError):
        assert issubclass(kind, HemasegError), kind
    assert FAILURES == (HemasegError, OSError)  # anything else is a defect: its traceback is shown
    with pytest.raises(SettingError, match="score threshold must be between 0 and 1, got 2"):
        check_fraction(2, "score threshold")
