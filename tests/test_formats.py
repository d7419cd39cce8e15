import json

import numpy as np
import pytest
import tifffile
import torch
from pycocotools import mask as mask_utils

from hemaseg.data.contract import labels_to_masks, validate_target
from hemaseg.data.formats import load_sample, open_dataset, semantic_to_labels


def semantic_to_instances(mask: np.ndarray, **kw):
    """:func:`semantic_to_labels` as dense stacks: ``N x H x W`` cell masks, their nucleus masks, the report."""
    cells, nuclei, report = semantic_to_labels(mask, **kw)
    masks, ids = labels_to_masks(cells)
    return masks, (nuclei[None] == ids[:, None, None]).astype(np.uint8), report
from hemaseg.data.io import DataError

from conftest import save_png, semantic_pair


# ------------------------------------------------------------------ semantic masks
def test_semantic_mask_several_cells_each_with_its_nucleus():
    m = np.zeros((10, 20), np.uint8)
    m[1:5, 1:5] = 128
    m[2:4, 2:4] = 255  # nucleus of cell 1
    m[6:9, 10:18] = 255  # a cell that is all nucleus
    m[1:3, 12:14] = 128  # a cytoplasm-only cell
    cells, nuclei, report = semantic_to_instances(m, min_area=1)
    assert cells.shape == (3, 10, 20)
    areas = sorted(zip(cells.sum(axis=(1, 2)).tolist(), nuclei.sum(axis=(1, 2)).tolist()))
    assert areas == [(4, 0), (16, 4), (24, 24)]
    assert report == {"stray": {}, "dropped": {}}


def test_semantic_stray_values_mapped_to_nearest_and_reported():
    m = np.zeros((8, 8), np.uint8)
    m[2:6, 2:6] = 128
    m[0, 0:3] = 7     # -> background
    m[3, 3] = 250     # -> nucleus
    m[4, 4] = 120     # -> cytoplasm
    cells, nuclei, report = semantic_to_instances(m, min_area=1)
    assert report["stray"] == {7: 3, 120: 1, 250: 1}
    assert len(cells) == 1 and cells[0].sum() == 16 and nuclei[0].sum() == 1
    with pytest.raises(DataError, match=r"somefile.png: unexpected mask values \{7: 3, 120: 1, 250: 1\}"):
        semantic_to_instances(m, stray="error", source="somefile.png")


def test_semantic_specks_below_min_area_dropped_and_reported():
    m = np.zeros((20, 20), np.uint8)
    m[2:10, 2:10] = 128
    m[15, 15] = 128
    cells, _, report = semantic_to_instances(m, min_area=10)
    assert len(cells) == 1 and report["dropped"] == {1: 1}


def test_semantic_empty_mask_gives_no_cells():
    cells, nuclei, _ = semantic_to_instances(np.zeros((5, 6), np.uint8))
    assert cells.shape == (0, 5, 6) and nuclei.shape == (0, 5, 6)


# ------------------------------------------------------------------ folder layouts
def test_same_folder_layout_bmp_beside_png(tmp_path):
    semantic_pair(tmp_path, "001", cells=[(2, 2, 8, 8), (12, 12, 20, 28)])
    semantic_pair(tmp_path, "002", cells=[])
    src = open_dataset(tmp_path)
    assert src.format == "semantic" and src.classes == ("cell",)
    assert [r.image.name for r in src.refs] == ["001.bmp", "002.bmp"]
    image, target = load_sample(src.refs[0], src.classes)
    validate_target(image, target)
    assert target["boxes"].tolist() == [[2, 2, 8, 8], [12, 12, 28, 20]]
    assert target["nuclei"].flatten(1).sum(1).tolist() == [1, 1]
    image, target = load_sample(src.refs[1], src.classes)  # no cell: a valid sample
    validate_target(image, target)
    assert target["masks"].shape == (0, 24, 32)


def test_two_folder_layout_of_the_recipe(tmp_path):
    img_dir, mask_dir = tmp_path / "images_train", tmp_path / "targets_train"
    img_dir.mkdir()
    mask_dir.mkdir()
    img, mask = semantic_pair(tmp_path, "x", image_ext=".bmp")
    (tmp_path / "x.bmp").rename(img_dir / "cell 1.bmp")
    (tmp_path / "x.png").rename(mask_dir / "cell 1.png")
    src = open_dataset(tmp_path)
    assert len(src.refs) == 1 and src.refs[0].annotation.parent == mask_dir
    _, target = load_sample(src.refs[0], src.classes)
    assert len(target["masks"]) == 1


def test_unpaired_files_are_named(tmp_path):
    semantic_pair(tmp_path, "001")
    save_png(tmp_path / "lonely.bmp", np.zeros((4, 4, 3), np.uint8))
    save_png(tmp_path / "orphan_masks.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path)
    assert "lonely.bmp: image has no mask" in str(err.value)
    assert "orphan_masks.png: mask has no matching image" in str(err.value)


def test_mask_of_other_size_is_refused_by_name(tmp_path):
    save_png(tmp_path / "a.bmp", np.zeros((10, 10, 3), np.uint8))
    save_png(tmp_path / "a.png", np.zeros((10, 12), np.uint8))
    src = open_dataset(tmp_path, "semantic")
    with pytest.raises(DataError, match=r"a.png: mask size 12x10 differs from image a.bmp size 10x10"):
        load_sample(src.refs[0], src.classes)


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(DataError, match="no image/mask pairs"):
        open_dataset(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        open_dataset(tmp_path / "nope")


# ------------------------------------------------------------------ instance label images
def _instance_set(root, with_table=True, tiff=False):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    img = np.full((12, 16, 3), 90, np.uint8)
    lab = np.zeros((12, 16), np.uint16)
    lab[1:5, 1:5] = 3
    lab[5:9, 4:8] = 300  # touches cell 3: label images keep touching cells apart
    lab[10:12, 14:16] = 7
    save_png(root / "images" / "s1.png", img)
    if tiff:
        tifffile.imwrite(root / "labels" / "s1.tif", lab)
    else:
        save_png(root / "labels" / "s1.png", lab)
    if with_table:
        (root / "labels" / "s1.csv").write_text("label,class\n3,red_cell\n300,white_cell\n7,platelet\n")
    save_png(root / "images" / "s2.png", img)
    save_png(root / "labels" / "s2.png", np.zeros((12, 16), np.uint16))
    if with_table:
        (root / "labels" / "s2.csv").write_text("label,class\n")
    return lab


@pytest.mark.parametrize("tiff", [False, True])
def test_instance_label_images_with_class_table(tmp_path, tiff):
    _instance_set(tmp_path, tiff=tiff)
    src = open_dataset(tmp_path)
    assert src.format == "instance"
    assert src.classes == ("platelet", "red_cell", "white_cell")
    image, target = load_sample(src.refs[0], src.classes)
    validate_target(image, target)
    assert target["labels"].tolist() == [2, 1, 3]  # ids 3, 7, 300 (sorted) -> red, platelet, white
    assert target["masks"].flatten(1).sum(1).tolist() == [16, 4, 16]
    _, empty = load_sample(src.refs[1], src.classes)
    assert empty["masks"].shape == (0, 12, 16)


def test_instance_without_table_is_one_class(tmp_path):
    _instance_set(tmp_path, with_table=False)
    src = open_dataset(tmp_path)
    assert src.classes == ("cell",)
    _, target = load_sample(src.refs[0], src.classes)
    assert target["labels"].tolist() == [1, 1, 1]


def test_bad_class_table_is_named(tmp_path):
    _instance_set(tmp_path)
    (tmp_path / "labels" / "s1.csv").write_text("id;name\n3;red\n")
    with pytest.raises(DataError, match="s1.csv: a class table needs the header"):
        open_dataset(tmp_path)


# ------------------------------------------------------------------ COCO
def _coco(tmp_path, segmentation_b):
    save_png(tmp_path / "images" / "f.png", np.zeros((20, 30, 3), np.uint8))
    save_png(tmp_path / "images" / "empty.png", np.zeros((20, 30, 3), np.uint8))
    ann = {
        "images": [{"id": 1, "file_name": "f.png", "height": 20, "width": 30},
                   {"id": 2, "file_name": "empty.png", "height": 20, "width": 30}],
        "categories": [{"id": 5, "name": "white_cell"}, {"id": 2, "name": "red_cell"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 40, "bbox": [2, 2, 10, 4],
             "segmentation": [[2, 2, 12, 2, 12, 6, 2, 6]]},
            {"id": 2, "image_id": 1, "category_id": 5, "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1],
             "segmentation": segmentation_b},
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    return path


def test_coco_polygons_and_rle(tmp_path):
    m = np.zeros((20, 30), np.uint8, order="F")
    m[10:15, 20:26] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    src = open_dataset(_coco(tmp_path, rle))
    assert src.format == "coco" and src.classes == ("red_cell", "white_cell")
    image, target = load_sample(src.refs[0], src.classes, coco=src.coco)
    validate_target(image, target)
    assert target["labels"].tolist() == [1, 2]
    assert target["boxes"][1].tolist() == [20, 10, 26, 15]
    assert int(target["masks"][1].sum()) == 30
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    assert (x1, y1) == (2, 2) and 12 <= x2 <= 13 and 6 <= y2 <= 7  # polygon rasterisation edge
    _, empty = load_sample(src.refs[1], src.classes, coco=src.coco)
    assert empty["masks"].shape == (0, 20, 30)


def test_coco_missing_image_is_named(tmp_path):
    path = _coco(tmp_path, [[0, 0, 4, 0, 4, 4]])
    (tmp_path / "images" / "f.png").unlink()
    with pytest.raises(DataError, match=r"ann.json: 1 image file\(s\) not found.*f.png"):
        open_dataset(path)


# ------------------------------------------------------------------ the real WBC data
def test_zheng_dataset2_stray_values_are_handled(zheng, caplog):
    src = open_dataset(zheng / "dataset2")
    assert src.format == "semantic" and len(src.refs) == 50
    ref = next(r for r in src.refs if r.image.stem == "047")
    with caplog.at_level("WARNING"):
        image, target = load_sample(ref, src.classes)
    validate_target(image, target)
    assert len(target["masks"]) == 1
    assert "047.png" in caplog.text and "7: 179" in caplog.text
    assert target["nuclei"].sum() > 0 and (target["nuclei"] <= target["masks"]).all()
    assert image.shape == (3, 300, 300) and torch.isfinite(image).all()
