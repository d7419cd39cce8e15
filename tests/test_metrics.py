import numpy as np
import pytest
import torch

from hemaseg.metrics import as_masks, dice, iou_matrix, match, match_dataset, semantic_iou


def _square(h, w, y, x, s, value=1):
    lab = np.zeros((h, w), np.int32)
    lab[y:y + s, x:x + s] = value
    return lab


def test_semantic_iou_and_dice_by_hand():
    t = _square(10, 10, 0, 0, 4)          # 16 px
    p = _square(10, 10, 0, 2, 4, value=9)  # 16 px, overlap 8
    assert semantic_iou(t, p) == pytest.approx(8 / 24)
    assert dice(t, p) == pytest.approx(16 / 32)
    assert np.isnan(semantic_iou(np.zeros((3, 3)), np.zeros((0, 3, 3))))  # both empty: nothing to score
    assert dice(t, np.zeros((0, 10, 10))) == 0.0


def test_shifted_disks_iou_matches_analytic_value():
    yy, xx = np.mgrid[:100, :100]
    a = ((yy - 50) ** 2 + (xx - 40) ** 2 < 400).astype(int)
    b = ((yy - 50) ** 2 + (xx - 60) ** 2 < 400).astype(int) * 2
    r, d = 20, 20  # two circles of radius r at distance d
    inter = 2 * r**2 * np.arccos(d / (2 * r)) - d / 2 * np.sqrt(4 * r**2 - d**2)
    expected = inter / (2 * np.pi * r**2 - inter)
    assert iou_matrix(a, b)[0, 0] == pytest.approx(expected, abs=0.01)


def test_match_counts_hand_made():
    t = _square(20, 20, 0, 0, 5, 1) + _square(20, 20, 10, 10, 5, 2)
    p = _square(20, 20, 0, 1, 5, 4) + _square(20, 20, 15, 0, 3, 6)  # one hit (IoU 20/30), one false
    m = match(t, p, 0.5)
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (1, 1, 1, 2, 2)
    assert m.precision == 0.5 and m.recall == 0.5 and m.f1 == 0.5
    assert m.mean_matched_iou == pytest.approx(20 / 30)
    assert m.panoptic_quality == pytest.approx((20 / 30) / 2)
    assert match(t, p, 0.7).tp == 0


def test_empty_prediction_empty_truth_and_all_missed():
    t = _square(8, 8, 0, 0, 3)
    none = np.zeros((8, 8), int)
    m = match(t, none)
    assert (m.tp, m.fn, m.recall, m.precision, m.f1) == (0, 1, 0.0, 0.0, 0.0)
    m = match(none, t)
    assert (m.fp, m.precision, m.f1) == (1, 0.0, 0.0)
    m = match(none, none)  # nothing to score is not a perfect score
    assert all(np.isnan(v) for v in (m.f1, m.precision, m.recall, m.panoptic_quality))


def test_duplicate_predictions_count_once():
    t = _square(8, 8, 0, 0, 4)
    dup = np.stack([t, t])  # two identical predicted masks (overlapping stack)
    m = match(t, dup)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)


def test_match_dataset_pools_counts_and_accepts_tensors():
    t = _square(8, 8, 0, 0, 4)
    pairs = [(torch.from_numpy(t), torch.from_numpy(t)[None]), (t, np.zeros((0, 8, 8)))]
    m = match_dataset(pairs)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)
    assert m.f1 == pytest.approx(2 / 3)


def test_as_masks_rejects_wrong_rank():
    with pytest.raises(ValueError, match="label image"):
        as_masks(np.zeros(4))
