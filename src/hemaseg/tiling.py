"""Images of any size: overlapping tiles, sparse cells, seams merged. Small pure functions.

A whole smear field is thousands of pixels wide with hundreds of cells; an ``N x H x W`` mask stack of
it would not fit in memory. Here a cell is stored *sparsely*: its box (``XYXY`` ints in image pixels,
``x2``/``y2`` exclusive) and its mask cropped to that box (:class:`Cells`). Segmenting a large image:

1. :func:`tiles` covers it with overlapping crops (``tile`` px, at least ``overlap`` px shared), each
   with its *core*: the seams run halfway through the overlaps, so the cores partition the image;
2. the method runs on each crop; :meth:`Cells.from_result` keeps each cell as box + local mask;
3. :func:`in_core` keeps the cells whose centre lies in the crop's core: each cell comes from exactly
   one crop, the one where it sits farthest from the edges - whole and with context, provided it is
   smaller than ``overlap / 2`` from centre to rim; :func:`dedupe_cells` drops a crop's own double
   detections;
4. :func:`merge_cells` removes any remaining duplicate across a seam (mask IoU), as a safety net.

Memory is bounded by one crop's dense result plus the sparse cells, whatever the image size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    return list(range(0, n - tile, tile - overlap)) + [n - tile]


def tile_boxes(height: int, width: int, tile: int = 1024, overlap: int = 256) -> list[tuple[int, int, int, int]]:
    """``XYXY`` crop boxes of at most ``tile x tile`` px covering a ``height x width`` image, neighbours
    sharing at least ``overlap`` px; the last row and column are aligned to the image's far edges.

    >>> tile_boxes(100, 250, tile=100, overlap=20)
    [(0, 0, 100, 100), (80, 0, 180, 100), (150, 0, 250, 100)]
    >>> tile_boxes(50, 60, tile=100, overlap=20)
    [(0, 0, 60, 50)]
    """
    return [crop for crop, _ in tiles(height, width, tile, overlap)]


def tiles(height: int, width: int, tile: int = 1024, overlap: int = 256) -> list[tuple[tuple[int, int, int, int], tuple[float, float, float, float]]]:
    """``(crop, core)`` per tile: the crop box (as :func:`tile_boxes`) and its *core*, the part of the image
    closer to this crop's middle than to any neighbour's (seams halfway through each overlap). The
    cores partition the image, and each lies at least ``overlap / 2`` px inside its crop on inner sides.

    >>> [core for _, core in tiles(100, 250, tile=100, overlap=20)]
    [(0, 0, 90.0, 100), (90.0, 0, 165.0, 100), (165.0, 0, 250, 100)]
    """
    if tile <= overlap or overlap < 0:
        raise ValueError(f"tile ({tile}) must exceed overlap ({overlap}) >= 0")

    def axis(n: int) -> list[tuple[int, int, float, float]]:
        starts = _starts(n, tile, overlap)
        ends = [min(s + tile, n) for s in starts]
        seams = [(ends[i] + starts[i + 1]) / 2 for i in range(len(starts) - 1)]
        return [(s, e, seams[i - 1] if i else 0, seams[i] if i < len(seams) else n) for i, (s, e) in enumerate(zip(starts, ends))]

    return [((x0, y0, x1, y1), (cx0, cy0, cx1, cy1)) for y0, y1, cy0, cy1 in axis(height) for x0, x1, cx0, cx1 in axis(width)]


def in_core(boxes: np.ndarray, core) -> np.ndarray:
    """``bool[N]``: which ``boxes`` (``N x 4 XYXY``) have their centre in ``core`` (``XYXY``, half-open)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return (cx >= core[0]) & (cx < core[2]) & (cy >= core[1]) & (cy < core[3])


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


def merge_cells(kept: Cells, new: Cells, iou_threshold: float = 0.5) -> Cells:
    """``kept`` plus the cells of ``new`` that duplicate none of them (mask IoU below ``iou_threshold``
    with every kept cell of the same class); a duplicate with a higher score replaces the kept cell."""
    if not len(new):
        return kept
    if not len(kept):
        return new
    replaced: set[int] = set()
    take = []  # indices of new: additions and better-scored replacements
    for j in np.argsort(-new.scores, kind="stable"):
        b = new.boxes[j]
        overlapping = [i for i in boxes_overlapping(kept.boxes, b) if kept.labels[i] == new.labels[j]]
        dup = next((int(i) for i in overlapping if pair_iou(kept.boxes[i], kept.masks[i], b, new.masks[j]) >= iou_threshold), None)
        if dup is None:
            take.append(j)
        elif new.scores[j] > kept.scores[dup] and dup not in replaced:
            replaced.add(dup)
            take.append(j)
    return concat_cells([kept.select([i for i in range(len(kept)) if i not in replaced]), new.select(take)])


def crop_image(image, box) -> torch.Tensor:
    """The ``XYXY`` ``box`` of an image - a contract ``CHW`` tensor, or an ``HWC``/``HW`` array of any
    dtype :func:`~hemaseg.data.contract.image_to_tensor` takes - as a contract ``CHW float`` tensor."""
    from .data.contract import image_to_tensor

    x0, y0, x1, y1 = (int(v) for v in box)
    if isinstance(image, torch.Tensor):
        return image[:, y0:y1, x0:x1]
    return image_to_tensor(image[y0:y1, x0:x1])


def image_size(image) -> tuple[int, int]:
    """``(height, width)`` of a ``CHW`` tensor or an ``HWC``/``HW`` array."""
    return tuple(image.shape[1:3]) if isinstance(image, torch.Tensor) else tuple(image.shape[:2])


def dedupe_cells(cells: Cells, iou_threshold: float = 0.5) -> Cells:
    """Greedy mask non-maximum suppression: a cell whose mask overlaps a better-scored cell of the same
    class with IoU >= ``iou_threshold`` is dropped (a model's own double detections, and cells seen
    whole by two tiles)."""
    kept: list[int] = []
    for j in np.argsort(-cells.scores, kind="stable"):
        b, m = cells.boxes[j], cells.masks[j]
        idx = np.asarray(kept, np.int64)
        near = idx[boxes_overlapping(cells.boxes[idx].reshape(-1, 4), b)] if len(idx) else idx
        if all(pair_iou(cells.boxes[k], cells.masks[k], b, m) < iou_threshold for k in near if cells.labels[k] == cells.labels[j]):
            kept.append(int(j))
    return cells.select(sorted(kept))


def segment_tiled(method: Callable[[torch.Tensor], dict], image, tile: int = 1024, overlap: int = 256,
                  iou_threshold: float = 0.5) -> Cells:
    """Segment an image (contract ``CHW`` tensor, or an ``HWC`` array of any dtype, converted one tile at
    a time) tile by tile with ``method`` (contract image in; :class:`Cells` or a dense result out) into
    sparse :class:`Cells`.

    Only one tile is ever dense; an image no larger than ``tile`` is a single tile (no seams)."""
    h, w = image_size(image)
    cells = Cells(h, w)
    for crop, core in tiles(h, w, tile, overlap):
        cells = merge_cells(cells, tile_cells(method(crop_image(image, crop)), crop, core, h, w, iou_threshold), iou_threshold)
    return cells


def tile_cells(found, crop, core, height: int, width: int, iou_threshold: float = 0.5) -> Cells:
    """What a method ``found`` in the ``XYXY`` tile ``crop`` (:class:`Cells` or a dense result, in the
    tile's coordinates) as cells of the ``height x width`` image: those whose box centre lies in the
    tile's ``core``, a model's double detections dropped (:func:`dedupe_cells`)."""
    part = found.moved(crop[:2], height, width) if isinstance(found, Cells) else Cells.from_result(found, height, width, offset=crop[:2])
    return dedupe_cells(part.select(in_core(part.boxes, core)), iou_threshold)
