"""The result type: the cells found in one image, stored sparsely, and their geometry. Small pure functions.

A whole smear field is thousands of pixels wide with hundreds of cells; an ``N x H x W`` mask stack of it
would not fit in memory. A cell is therefore its box (``XYXY`` ints in image pixels, ``x2``/``y2``
exclusive) and its mask cropped to that box (:class:`Cells`); the helpers here compare, paste and encode
such masks without building full-size ones. :mod:`hemaseg.tiling` builds :class:`Cells` tile by tile;
:mod:`hemaseg.evaluation`, :mod:`hemaseg.segment`, :mod:`hemaseg.measure` and the exports read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from pycocotools import mask as mask_utils

NUCLEUS_CLASS = "nucleus"  # the class name a model's learned nuclei carry


def nucleus_label(classes) -> int | None:
    """The label (1-based class index) of a model's learned nuclei among ``classes``, None without them.

    >>> nucleus_label(("white_cell", "nucleus")), nucleus_label(("white_cell",))
    (2, None)
    """
    return list(classes).index(NUCLEUS_CLASS) + 1 if NUCLEUS_CLASS in classes else None


def mask_extent(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` (exclusive ends) of the nonzero pixels of an ``H x W`` mask; None if empty.

    >>> m = np.zeros((5, 6), bool); m[1:3, 2:5] = True
    >>> mask_extent(m), mask_extent(np.zeros((2, 2)))
    ((1, 3, 2, 5), None)
    """
    rows, cols = np.flatnonzero(np.any(mask, axis=1)), np.flatnonzero(np.any(mask, axis=0))
    if not len(rows):
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@dataclass
class Cells:
    """Sparse instances of one ``height x width`` image: cell ``i`` covers ``masks[i]`` (``bool``, the
    size of its box) placed at ``boxes[i]`` (``XYXY`` ints, exclusive ends). ``nuclei[i]``, when the
    method gives nuclei, is a mask of the same box (else ``nuclei`` is None)."""

    height: int
    width: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    masks: list[np.ndarray] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    nuclei: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.masks)

    @classmethod
    def from_result(cls, result: dict, height: int, width: int, offset: tuple[int, int] = (0, 0)) -> Cells:
        """From a method's dense result (``masks UInt8[N,h,w]``, ``labels``, ``scores``, optional
        ``nuclei``) of a crop whose top-left corner is at ``offset`` (``x, y``) in the image."""
        masks = result["masks"].numpy() != 0 if isinstance(result["masks"], torch.Tensor) else np.asarray(result["masks"]) != 0
        nuclei = result.get("nuclei")
        if isinstance(nuclei, torch.Tensor):
            nuclei = nuclei.numpy()
        scores = np.asarray(result["scores"], np.float32).reshape(-1)
        labels = np.asarray(result["labels"], np.int64).reshape(-1)
        ox, oy = offset
        boxes, local, local_nuclei, keep = [], [], [], []
        for i, m in enumerate(masks):
            extent = mask_extent(m)
            if extent is None:
                continue
            y0, y1, x0, x1 = extent
            boxes.append((x0 + ox, y0 + oy, x1 + ox, y1 + oy))
            local.append(m[y0:y1, x0:x1].copy())
            if nuclei is not None:
                local_nuclei.append((nuclei[i, y0:y1, x0:x1] != 0) & local[-1])
            keep.append(i)
        return cls(height, width, np.array(boxes, np.int64).reshape(-1, 4), local, scores[keep], labels[keep],
                   local_nuclei if nuclei is not None else None)

    @classmethod
    def from_labels(cls, labels: np.ndarray, ids: np.ndarray | None = None, classes: np.ndarray | None = None,
                    nuclei: np.ndarray | None = None) -> Cells:
        """From an ``HxW`` label image: cell ``k`` is the pixels equal to ``ids[k]`` (default: every
        nonzero value, in increasing order), of class ``classes[k]`` (default 1), score 1; ``nuclei``, an
        ``HxW`` image holding on each nucleus pixel the id of its cell. Memory: the boxes of the cells.

        >>> lab = np.array([[0, 3, 3], [5, 0, 3]]); c = Cells.from_labels(lab, nuclei=np.where(lab == 3, 3, 0))
        >>> c.boxes.tolist(), [int(m.sum()) for m in c.masks], [int(n.sum()) for n in c.nuclei]
        ([[1, 0, 3, 2], [0, 1, 1, 2]], [3, 1], [3, 0])
        """
        from scipy import ndimage as ndi

        lab = np.asarray(labels)
        h, w = lab.shape
        if ids is None:
            ids = np.unique(lab)
            ids = ids[ids > 0]
        ids = np.asarray(ids, np.int64)
        slices = ndi.find_objects(lab, max_label=int(ids.max()) if len(ids) else 0) if lab.dtype.kind in "iu" else []
        boxes, masks, cell_nuclei, keep = [], [], [], []
        for k, i in enumerate(ids):
            sl = slices[i - 1] if i - 1 < len(slices) else None
            if sl is None:
                continue
            sy, sx = sl
            boxes.append((sx.start, sy.start, sx.stop, sy.stop))
            masks.append(lab[sl] == i)
            if nuclei is not None:
                cell_nuclei.append(np.asarray(nuclei)[sl] == i)
            keep.append(k)
        n = len(keep)
        classes = np.ones(len(ids), np.int64) if classes is None else np.asarray(classes, np.int64)
        return cls(h, w, np.array(boxes, np.int64).reshape(-1, 4), masks, np.ones(n, np.float32), classes[keep],
                   cell_nuclei if nuclei is not None else None)

    def union(self, nuclei: bool = False) -> np.ndarray:
        """``H x W bool``: the pixels of any cell (or any nucleus; all False without nuclei)."""
        out = np.zeros((self.height, self.width), bool)
        parts = self.nuclei if nuclei else self.masks
        for i, (x0, y0, x1, y1) in enumerate(self.boxes if parts is not None else []):
            out[y0:y1, x0:x1] |= parts[i]
        return out

    def moved(self, offset: tuple[int, int], height: int, width: int) -> Cells:
        """The same cells in a ``height x width`` image where this one's top-left corner is at ``offset``."""
        ox, oy = offset
        return Cells(height, width, self.boxes + np.array([ox, oy, ox, oy]), self.masks, self.scores, self.labels, self.nuclei)

    def select(self, index) -> Cells:
        """The cells at ``index`` (indices or a boolean mask), in that order."""
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, np.int64).reshape(-1)
        return Cells(self.height, self.width, self.boxes[idx].reshape(-1, 4), [self.masks[i] for i in idx],
                     self.scores[idx], self.labels[idx], None if self.nuclei is None else [self.nuclei[i] for i in idx])

    def dense(self, nuclei: bool = False) -> np.ndarray:
        """``N x H x W uint8`` masks (or nuclei) - only for images small enough to hold them."""
        out = np.zeros((len(self), self.height, self.width), np.uint8)
        parts = self.nuclei if nuclei else self.masks
        for i, (x0, y0, x1, y1) in enumerate(self.boxes):
            if parts is not None:
                out[i, y0:y1, x0:x1] = parts[i]
        return out

    def label_image(self) -> np.ndarray:
        """``H x W`` label image (cell ``i`` -> ``i + 1``; 0 background; where cells overlap, the higher
        score wins), ``uint16`` up to 65535 cells, else ``uint32``."""
        lab = np.zeros((self.height, self.width), np.uint16 if len(self) < 65536 else np.uint32)
        for i in np.argsort(self.scores, kind="stable"):  # best painted last
            x0, y0, x1, y1 = self.boxes[i]
            lab[y0:y1, x0:x1][self.masks[i]] = i + 1
        return lab


def concat_cells(parts: list[Cells]) -> Cells:
    """All cells of ``parts`` (of one image), in order. Nuclei are kept if any part has them (cells of
    a part without get empty nuclei)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    h, w = parts[0].height, parts[0].width
    nuclei = None
    if any(p.nuclei is not None and len(p) for p in parts):
        nuclei = [n for p in parts for n in (p.nuclei if p.nuclei is not None else [np.zeros_like(m) for m in p.masks])]
    return Cells(h, w, np.concatenate([p.boxes for p in parts]).reshape(-1, 4), [m for p in parts for m in p.masks],
                 np.concatenate([p.scores for p in parts]), np.concatenate([p.labels for p in parts]), nuclei)


def _overlap_slices(box_a, box_b):
    """Slices of the intersection of two ``XYXY`` boxes in each box's own coordinates (None if disjoint)."""
    ax0, ay0 = int(box_a[0]), int(box_a[1])
    bx0, by0 = int(box_b[0]), int(box_b[1])
    x0, y0 = max(ax0, bx0), max(ay0, by0)
    x1, y1 = min(int(box_a[2]), int(box_b[2])), min(int(box_a[3]), int(box_b[3]))
    if x1 <= x0 or y1 <= y0:
        return None
    return ((slice(y0 - ay0, y1 - ay0), slice(x0 - ax0, x1 - ax0)), (slice(y0 - by0, y1 - by0), slice(x0 - bx0, x1 - bx0)))


def pair_intersection(box_a, mask_a: np.ndarray, box_b, mask_b: np.ndarray) -> int:
    """Pixels shared by two sparse masks (each ``bool`` in its ``XYXY`` box)."""
    sl = _overlap_slices(box_a, box_b)
    return 0 if sl is None else int(np.logical_and(mask_a[sl[0]], mask_b[sl[1]]).sum())


def paste_into(box_a, mask_a: np.ndarray, box_b, mask_b: np.ndarray) -> np.ndarray:
    """``mask_b`` (in ``box_b``) as a mask of ``box_a``'s size, clipped to ``mask_a``."""
    out = np.zeros(mask_a.shape, bool)
    sl = _overlap_slices(box_a, box_b)
    if sl is not None:
        out[sl[0]] = mask_b[sl[1]]
    return out & mask_a


def pair_iou(box_a, mask_a: np.ndarray, box_b, mask_b: np.ndarray) -> float:
    """IoU of two sparse masks (each ``bool`` in its ``XYXY`` box).

    >>> a = np.ones((10, 10), bool); b = np.ones((10, 10), bool)
    >>> pair_iou((0, 0, 10, 10), a, (5, 0, 15, 10), b)  # half overlap: 50 / 150
    0.3333333333333333
    """
    inter = pair_intersection(box_a, mask_a, box_b, mask_b)
    union = mask_a.sum() + mask_b.sum() - inter
    return float(inter / union) if union else 0.0


def boxes_overlapping(boxes: np.ndarray, box) -> np.ndarray:
    """Indices of ``boxes`` (``N x 4 XYXY``) that intersect ``box``."""
    return np.flatnonzero((boxes[:, 0] < box[2]) & (boxes[:, 2] > box[0]) & (boxes[:, 1] < box[3]) & (boxes[:, 3] > box[1]))


def iou_matrix_cells(a: Cells, b: Cells) -> np.ndarray:
    """``len(a) x len(b)`` mask IoU of two sparse cell sets of one image (computed only where boxes meet),
    for :mod:`hemaseg.metrics`' matching of images too large for dense masks."""
    iou = np.zeros((len(a), len(b)))
    for j, (box, m) in enumerate(zip(b.boxes, b.masks)):
        for i in boxes_overlapping(a.boxes, box):
            iou[i, j] = pair_iou(a.boxes[i], a.masks[i], box, m)
    return iou


def encode_rle_in_box(mask: np.ndarray, box, height: int, width: int) -> dict:
    """COCO RLE (text ``counts``) of a ``height x width`` image that is 1 on ``mask`` (``bool``, the size of
    the ``XYXY`` ``box``) and 0 elsewhere - without building the full-size mask.

    >>> from pycocotools import mask as mask_utils
    >>> full = np.zeros((6, 5), bool); full[1:4, 2:4] = True; full[2, 2] = False
    >>> encode_rle_in_box(full[1:4, 2:4], (2, 1, 4, 4), 6, 5)["counts"] == mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))["counts"].decode()
    True
    """
    x0, y0 = int(box[0]), int(box[1])
    cols = np.pad(np.asarray(mask, bool).T, ((0, 0), (1, 1))).astype(np.int8)  # column-major, as COCO counts
    d = np.diff(cols, axis=1)
    sc, sy = np.nonzero(d == 1)
    ec, ey = np.nonzero(d == -1)
    starts, ends = (x0 + sc) * height + y0 + sy, (x0 + ec) * height + y0 + ey
    join = starts[1:] == ends[:-1]  # a run reaching the bottom row continues at the top of the next column
    starts, ends = starts[np.r_[True, ~join]], ends[np.r_[~join, True]]
    bounds = np.empty(2 * len(starts) + 2, np.int64)
    bounds[0], bounds[-1] = 0, height * width
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    counts = np.diff(bounds).tolist()
    if len(counts) > 1 and counts[-1] == 0:  # ends on the last pixel: COCO writes no empty final run
        counts.pop()
    rle = mask_utils.frPyObjects({"counts": counts, "size": [height, width]}, height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
