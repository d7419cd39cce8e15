import json

import numpy as np

import pytest
import torch

from hemaseg.data.dataset import CellDataset, ref_key, select_refs, split_record, split_refs
from hemaseg.data.formats import open_dataset

from conftest import semantic_pair


def _data(tmp_path, n=6):
    for i in range(n):
        semantic_pair(tmp_path / "d", f"{i:03d}")
    return open_dataset(tmp_path / "d")


def test_split_is_seeded_and_independent_of_listing_order(tmp_path):
    src = _data(tmp_path)
    a = split_refs(src.refs, 0.34, seed=3)
    b = split_refs(list(reversed(src.refs)), 0.34, seed=3)
    assert a == b and len(a[1]) == 2 and not set(a[0]) & set(a[1])
    assert split_refs(src.refs, 0.34, seed=4) != a
    with pytest.raises(ValueError, match="val_fraction"):
        split_refs(src.refs, 1.0, seed=0)


def test_select_refs_by_relative_or_absolute_path(tmp_path):
    src = _data(tmp_path)
    _, val = split_refs(src.refs, 0.5, seed=0)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"val": [ref_key(r, src.root) for r in val], "train": [str(src.refs[0].image.resolve())]}))
    assert select_refs(src.refs, src.root, split, "val") == val
    assert select_refs(src.refs, src.root, split, "train") == [src.refs[0]]
    split.write_text(json.dumps({"val": ["nope.bmp"]}))
    with pytest.raises(ValueError, match="not in"):
        select_refs(src.refs, src.root, split, "val")


def test_dataset_items_follow_the_contract(tmp_path):
    src = _data(tmp_path, 2)
    ds = CellDataset(src)
    image, target = ds[1]
    assert image.shape == (3, 24, 32) and target["image_id"] == 1 and len(target["masks"]) == 1


def test_nucleus_label_adds_each_nucleus_as_an_instance(tmp_path):
    semantic_pair(tmp_path / "d", "a", h=30, w=40, cells=((2, 2, 12, 12), (15, 20, 27, 36)))
    src = open_dataset(tmp_path / "d")
    plain = CellDataset(src, classes=("cell", "nucleus"))[0][1]
    learned = CellDataset(src, classes=("cell", "nucleus"), nucleus_label=2)[0][1]
    assert plain["labels"].tolist() == [1, 1] and "nuclei" in plain
    assert learned["labels"].tolist() == [1, 1, 2, 2] and "nuclei" not in learned
    assert torch.equal(learned["masks"][2:], plain["nuclei"]) and learned["boxes"].shape == (4, 4)


def test_split_of_several_folders_selects_per_folder(tmp_path):
    for i in range(4):
        semantic_pair(tmp_path / "zheng" / "d1", f"{i:03d}")
        semantic_pair(tmp_path / "zheng" / "d2", f"{i:03d}")  # same names in both folders
    d1, d2 = open_dataset(tmp_path / "zheng" / "d1"), open_dataset(tmp_path / "zheng" / "d2")
    (t1, v1), (t2, v2) = split_refs(d1.refs, 0.25, 0), split_refs(d2.refs, 0.25, 0)
    record = split_record([(d1.root, t1), (d2.root, t2)], [(d1.root, v1), (d2.root, v2)])
    assert record["sources"] == ["d1", "d2"] and record["root"] == str((tmp_path / "zheng").resolve())
    assert record["val"] == [f"d1/{v1[0].name}.bmp", f"d2/{v2[0].name}.bmp"]
    split = tmp_path / "split.json"
    split.write_text(json.dumps(record))
    assert select_refs(d1.refs, d1.root, split, "val") == v1
    assert select_refs(d2.refs, d2.root, split, "train") == t2
    semantic_pair(tmp_path / "other", "000")
    other = open_dataset(tmp_path / "other")
    with pytest.raises(ValueError, match="none of the run's data folders"):
        select_refs(other.refs, other.root, split, "val")


def test_cell_diameter_is_the_median_disk_diameter_and_resize_scales_samples(tmp_path):
    from hemaseg.data.dataset import cell_diameter

    semantic_pair(tmp_path / "d", "a", h=40, w=40, cells=[(2, 2, 12, 12), (20, 20, 40, 40)])  # 10x10 and 20x20
    semantic_pair(tmp_path / "d", "b", h=40, w=40, cells=[(5, 5, 21, 21)])  # 16x16
    src = open_dataset(tmp_path / "d")
    assert cell_diameter(src, src.refs) == pytest.approx(2 * np.sqrt(256 / np.pi))
    assert cell_diameter(src, src.refs, skip=("cell",)) is None
    plain, half = CellDataset(src)[0], CellDataset(src, resize=0.5)[0]
    assert tuple(half[0].shape) == (3, 20, 20)
    assert half[1]["masks"].sum(dim=(1, 2)).tolist() == [25, 100]
    assert torch.equal(half[1]["boxes"], plain[1]["boxes"] / 2)
