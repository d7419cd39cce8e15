"""Images of any size: overlapping tiles, seams merged. Small pure functions.

A whole smear field is thousands of pixels wide with hundreds of cells; its cells are kept sparse
(:class:`hemaseg.cells.Cells`: box + mask in its box). Segmenting a large image:

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

import numpy as np
import torch

from .cells import Cells, boxes_overlapping, concat_cells, pair_iou
from .data.contract import crop_image, image_size


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
