import json

import pytest

from hemaseg.data.dataset import CellDataset, ref_key, select_refs, split_refs
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
