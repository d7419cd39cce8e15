import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
import pytest
import torch

from hemaseg.data.contract import (
    drop_empty, empty_target, image_to_tensor, labels_to_masks, make_target, masks_to_boxes, masks_to_labels,
    tensor_to_image, validate_target,
)


def test_image_to_tensor_converts_dtypes_and_channels_consistently():
    rgb8 = np.array([[[255, 0, 51]]], np.uint8)
    rgb16 = rgb8.astype(np.uint16) * 257
    t8, t16 = image_to_tensor(rgb8), image_to_tensor(rgb16)
    assert t8.shape == (3, 1, 1) and t8.dtype == torch.float32
    assert torch.allclose(t8, t16)
    assert torch.allclose(t8[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    gray = image_to_tensor(np.array([[0, 255]], np.uint8))
    assert gray.shape == (3, 1, 2) and torch.equal(gray[0], gray[2])
    rgba = np.concatenate([rgb8, np.zeros((1, 1, 1), np.uint8)], axis=2)
    assert torch.equal(image_to_tensor(rgba), t8)  # alpha dropped, not multiplied in
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_to_tensor(np.full((2, 2), 3.0))


def test_tensor_to_image_inverts():
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(tensor_to_image(image_to_tensor(img)), img)


def test_masks_to_boxes_exclusive_xyxy_and_empty():
    m = torch.zeros(3, 5, 7, dtype=torch.uint8)
    m[0, 1:4, 2:6] = 1
    m[1, 4, 0] = 1  # one pixel at x=0, y=4
    boxes = masks_to_boxes(m)
    assert boxes.tolist() == [[2, 1, 6, 4], [0, 4, 1, 5], [0, 0, 0, 0]]
    assert masks_to_boxes(torch.zeros(0, 5, 7, dtype=torch.uint8)).shape == (0, 4)


def test_make_target_drops_empty_instances_and_defaults_labels():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[0, :2, :2] = 1
    masks[2, 3, 3] = 9  # nonzero counts as inside
    t = make_target(masks)
    assert t["labels"].tolist() == [1, 1]
    assert t["boxes"].tolist() == [[0, 0, 2, 2], [3, 3, 4, 4]]
    assert t["masks"].dtype == torch.uint8 and int(t["masks"].max()) == 1


def test_make_target_rejects_background_label_and_count_mismatch():
    masks = np.ones((2, 3, 3), np.uint8)
    with pytest.raises(ValueError, match=">= 1"):
        make_target(masks, [0, 1])
    with pytest.raises(ValueError, match="2 masks"):
        make_target(masks, [1])


def test_nuclei_clipped_to_their_cell():
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :2, :2] = 1
    nuclei = np.ones((1, 4, 4), np.uint8)
    t = make_target(masks, nuclei=nuclei)
    assert int(t["nuclei"].sum()) == 4


def test_empty_target_is_valid():
    image = torch.zeros(3, 5, 6)
    t = empty_target(5, 6, with_nuclei=True)
    validate_target(image, t)
    assert drop_empty(t)["boxes"].shape == (0, 4)


def test_label_round_trip_with_gaps_in_ids():
    lab = np.zeros((5, 5), np.uint16)
    lab[0, :2] = 4
    lab[2:, 2:] = 9
    masks, ids = labels_to_masks(lab)
    assert ids.tolist() == [4, 9]
    back = masks_to_labels(masks)
    assert np.array_equal(back > 0, lab > 0)
    assert len(np.unique(back)) == 3


def test_masks_to_labels_overlap_resolved_by_score():
    masks = np.zeros((2, 3, 3), np.uint8)
    masks[0, :2, :2] = 1
    masks[1, 1:, 1:] = 1
    assert masks_to_labels(masks, scores=[0.9, 0.1])[1, 1] == 1
    assert masks_to_labels(masks, scores=[0.1, 0.9])[1, 1] == 2


def test_validate_target_catches_wrong_dtypes():
    image = torch.zeros(3, 4, 4)
    t = make_target(np.ones((1, 4, 4)))
    validate_target(image, t)
    with pytest.raises(ValueError, match="masks"):
        validate_target(image, dict(t, masks=t["masks"].bool()))
    with pytest.raises(ValueError, match="image"):
        validate_target(image.double(), t)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint16, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 6)))
def test_label_image_instances_label_image_is_the_same_partition(lab):
    masks, ids = labels_to_masks(lab)
    back = masks_to_labels(masks)
    assert masks.shape == (len(ids), *lab.shape)
    # same partition: each original id maps to exactly one new id, background stays background
    assert np.array_equal(back == 0, lab == 0)
    assert np.array_equal(ids[back[lab > 0].astype(np.int64) - 1], lab[lab > 0])
    target = make_target(masks)
    assert target["boxes"].shape == (len(ids), 4)


def test_nucleus_instances_appended_and_the_empty_case():
    from hemaseg.data.contract import add_nucleus_instances

    cells = np.zeros((2, 8, 8), np.uint8)
    cells[0, :4, :4] = 1
    cells[1, 4:, 4:] = 1
    nuclei = np.zeros_like(cells)
    nuclei[0, 1:3, 1:3] = 1  # cell 1 has no nucleus (a red cell): no instance for it
    t = add_nucleus_instances(make_target(cells, [1, 2], nuclei), label=3)
    assert t["labels"].tolist() == [1, 2, 3] and t["masks"].shape == (3, 8, 8)
    assert t["boxes"].tolist()[2] == [1, 1, 3, 3] and "nuclei" not in t
    validate_target(torch.zeros(3, 8, 8), t)
    empty = add_nucleus_instances(empty_target(8, 8, with_nuclei=True), label=3)
    assert empty["masks"].shape == (0, 8, 8) and empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64
    no_nuclei = add_nucleus_instances(make_target(cells), label=3)
    assert no_nuclei["labels"].tolist() == [1, 1]
