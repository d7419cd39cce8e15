"""Issue 7, point 1: bad inputs, each built here, each with a clear error naming the file and the
problem; in a batch, the batch goes on and the summary lists what failed (docs/robustness.md)."""

import csv
import json

import numpy as np
import pytest
import tifffile
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
    with pytest.raises(DataError, match=r"stack\.tif: expected a 2-D grayscale or colour image"):
        read_image(tmp_path / "stack.tif")
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
