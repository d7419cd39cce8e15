"""Model-independent segmentation metrics (after StarDist's ``matching.py``).

Inputs are *instances*: a label image (``HxW`` ints, 0 background) or a mask stack (``N x H x W``,
nonzero = inside; overlaps allowed), as NumPy arrays or tensors.

* :func:`semantic_iou` / :func:`dice` - the recipe's per-image scores: the union of all predicted
  cells against the union of all true cells. Both empty counts as a perfect 1.0.
* :func:`match` - one-to-one matching of instances (Hungarian on IoU, pairs below ``thresh`` never
  match) returning a :class:`Matching` record; :func:`match_dataset` pools counts over images.
"""

from __future__ import annotations

import math

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .cells import Cells, iou_matrix_cells, mask_extent


def as_masks(x) -> np.ndarray:
    """A label image ``HxW`` or stack ``NxHxW`` (array or tensor) -> ``N x H x W bool``."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 2:
        ids = np.unique(a)
        ids = ids[ids != 0]
        return a[None] == ids[:, None, None]
    if a.ndim == 3:
        return a != 0
    raise ValueError(f"expected a label image (H, W) or masks (N, H, W), got shape {a.shape}")


def _union(x) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return (a != 0) if a.ndim == 2 else (a != 0).any(axis=0)


def semantic_iou(true, pred) -> float:
    """IoU of the union of true cells and the union of predicted cells (NaN when both are empty: nothing to
    score, left out of means by :func:`mean_of`).

    >>> t = np.zeros((4, 4), int); t[:2] = 1; p = np.zeros((4, 4), int); p[1:3] = 5
    >>> semantic_iou(t, p)
    0.3333333333333333
    """
    t, p = _union(true), _union(pred)
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: truth {t.shape} vs prediction {p.shape}")
    union = np.logical_or(t, p).sum()
    return float("nan") if union == 0 else float(np.logical_and(t, p).sum() / union)


def dice(true, pred) -> float:
    """Dice (F1) of the union of true cells and the union of predicted cells (NaN when both are empty)."""
    t, p = _union(true), _union(pred)
    total = t.sum() + p.sum()
    return float("nan") if total == 0 else float(2 * np.logical_and(t, p).sum() / total)


def iou_matrix(true, pred) -> np.ndarray:
    """``IoU[i, j]`` between true instance ``i`` and predicted instance ``j`` (label images or mask
    stacks; row ``i`` is mask ``i`` even when empty), by the sparse :func:`hemaseg.cells.iou_matrix_cells`.

    >>> t = np.zeros((4, 4), int); t[:2, :2] = 1; t[2:, 2:] = 2
    >>> iou_matrix(t, t[None] == 1).tolist()
    [[1.0], [0.0]]
    """
    t, p = as_masks(true), as_masks(pred)
    if t.shape[1:] != p.shape[1:]:
        raise ValueError(f"shape mismatch: truth {t.shape[1:]} vs prediction {p.shape[1:]}")
    return iou_matrix_cells(_as_cells(t), _as_cells(p))


def _as_cells(masks: np.ndarray) -> Cells:
    """``N x H x W bool`` -> one sparse cell per mask, an empty mask kept as an empty box."""
    boxes, local = [], []
    for m in masks:
        y0, y1, x0, x1 = mask_extent(m) or (0, 0, 0, 0)
        boxes.append((x0, y0, x1, y1))
        local.append(m[y0:y1, x0:x1])
    n, (h, w) = len(masks), masks.shape[1:]
    return Cells(h, w, np.array(boxes, np.int64).reshape(-1, 4), local, np.ones(n, np.float32), np.ones(n, np.int64))


@dataclass(frozen=True)
class Matching:
    """Result of matching predicted to true instances at IoU threshold ``thresh``."""

    thresh: float
    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    mean_matched_iou: float  # over true positives
    panoptic_quality: float  # sum of matched IoU / (tp + fp/2 + fn/2)

    def as_dict(self) -> dict:
        return asdict(self)


def _record(thresh: float, n_true: int, n_pred: int, tp: int, sum_iou: float) -> Matching:
    fp, fn = n_pred - tp, n_true - tp
    nothing = float("nan")  # no true and no predicted cell: nothing to score, not a perfect score
    precision = tp / n_pred if n_pred else (nothing if n_true == 0 else 0.0)
    recall = tp / n_true if n_true else (nothing if n_pred == 0 else 0.0)
    f1 = 2 * tp / (n_true + n_pred) if (n_true + n_pred) else nothing
    denom = tp + fp / 2 + fn / 2
    return Matching(thresh, n_true, n_pred, tp, fp, fn, precision, recall, f1,
                    sum_iou / tp if tp else 0.0, sum_iou / denom if denom else nothing)


def mean_of(values: Iterable[float]) -> float:
    """The mean of the values that are numbers (NaN - nothing scored - left out); NaN if none is.

    >>> mean_of([1.0, float("nan"), 0.5]), mean_of([]), mean_of([float("nan")])
    (0.75, nan, nan)
    """
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def matched_ious(iou: np.ndarray, thresh: float) -> np.ndarray:
    """IoUs of the optimal one-to-one matching restricted to pairs with IoU >= thresh."""
    if iou.size == 0:
        return np.zeros(0)
    cost = np.where(iou >= thresh, -iou, 0.0)  # pairs below thresh can never help
    rows, cols = linear_sum_assignment(cost)
    vals = iou[rows, cols]
    return vals[vals >= thresh]


def match(true, pred, thresh: float = 0.5) -> Matching:
    """Match instances one to one and count TP/FP/FN at IoU >= ``thresh``.

    >>> t = np.zeros((6, 6), int); t[:3, :3] = 1; t[3:, 3:] = 2
    >>> p = np.zeros((6, 6), int); p[:3, :2] = 1
    >>> m = match(t, p, 0.5); (m.tp, m.fp, m.fn, round(m.mean_matched_iou, 3))
    (1, 0, 1, 0.667)
    """
    iou = iou_matrix(true, pred)
    vals = matched_ious(iou, thresh)
    return _record(thresh, iou.shape[0], iou.shape[1], len(vals), float(vals.sum()))


class MatchCounter:
    """Pools matching counts over images at several thresholds from one IoU matrix per image.

    >>> c = MatchCounter((0.5, 0.9)); c.add(np.array([[0.8, 0.1]])); c.add(np.zeros((1, 0)))
    >>> r = c.result(0.5); (r.tp, r.fp, r.fn), c.result(0.9).tp
    ((1, 1, 1), 0)
    """

    def __init__(self, thresholds: Iterable[float] = (0.5,)):
        self.counts = {float(t): [0, 0, 0, 0.0] for t in thresholds}  # n_true, n_pred, tp, sum of matched IoU

    def add(self, iou: np.ndarray) -> None:
        for t, c in self.counts.items():
            vals = matched_ious(iou, t)
            c[0] += iou.shape[0]
            c[1] += iou.shape[1]
            c[2] += len(vals)
            c[3] += float(vals.sum())

    def result(self, thresh: float) -> Matching:
        return _record(thresh, *self.counts[float(thresh)])


def match_dataset(pairs: Iterable[tuple[object, object]], thresh: float = 0.5) -> Matching:
    """Pool the counts of :func:`match` over ``(true, pred)`` image pairs (micro-average)."""
    counter = MatchCounter((thresh,))
    for true, pred in pairs:
        counter.add(iou_matrix(true, pred))
    return counter.result(thresh)


def bootstrap_interval(n: int, statistic, rounds: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(index)`` over ``n`` images: ``rounds`` resamples of the
    image indices with replacement (``statistic`` gets an ``int`` index array and returns a number, e.g. a
    pooled F1 over those images). ``(nan, nan)`` without images.

    >>> lo, hi = bootstrap_interval(50, lambda i: float(np.mean(np.arange(50)[i] >= 25)))
    >>> 0.3 < lo < 0.5 < hi < 0.7
    True
    """
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(rounds)], np.float64)
    a = (1 - level) / 2
    return float(np.nanpercentile(values, 100 * a)), float(np.nanpercentile(values, 100 * (1 - a)))


def format_score(value: float, digits: int = 3) -> str:
    """A score as printed: ``n/a`` for nothing scored (NaN).

    >>> format_score(0.91234), format_score(float("nan"))
    ('0.912', 'n/a')
    """
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
