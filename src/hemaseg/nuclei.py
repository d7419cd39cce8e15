"""Nucleus of each segmented white cell, and its lobes.

Two sources, one entry point (:func:`cell_nuclei`; :func:`nuclei_for` is its dense form):

* **learned** (preferred): a model trained with nuclei as instances of their own class ``"nucleus"``
  (:mod:`hemaseg.train` does it whenever the training data carries nuclei). Each predicted nucleus is
  given to the cell that holds most of it (:func:`assign_nuclei_cells`).
* **split** (fallback, for models without a nucleus class or a cell the model gave no nucleus): inside
  the cell outline, the nucleus is the darker part - an Otsu threshold of the darkness computed over
  the cell's own pixels, so it adapts to each cell's stain.

Measured on held-out Zheng et al. images (docs/benchmarks.md, ``benchmarks/nucleus_learned.py``): the
learned nucleus reaches a higher nucleus Dice than the split of the same model's cells.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from .cells import Cells, boxes_overlapping, pair_intersection, paste_into
from .data.contract import crop_image

NUCLEATED = ("cell", "white_cell", "wbc", "leukocyte", "neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")


def split_nucleus(image: torch.Tensor, cell: np.ndarray, min_fraction: float = 0.05) -> np.ndarray:
    """``HxW bool`` nucleus of the cell ``cell`` (``HxW``, nonzero inside) in ``image`` (``CHW float``).

    Returns an empty mask when the cell is too uniform to hold a nucleus, or when the dark part is
    smaller than ``min_fraction`` of the cell.

    >>> img = torch.full((3, 20, 20), 0.8); img[:, 6:14, 6:14] = 0.3
    >>> cell = np.zeros((20, 20), bool); cell[3:17, 3:17] = True
    >>> int(split_nucleus(img, cell).sum())  # the 8x8 dark square, corners rounded by the opening
    60
    """
    m = np.asarray(cell) != 0
    if m.sum() < 10:
        return np.zeros(m.shape, bool)
    darkness = -image.mean(dim=0).cpu().numpy()
    values = darkness[m]
    if np.ptp(values) < 1e-3:
        return np.zeros(m.shape, bool)
    nucleus = (darkness > threshold_otsu(values)) & m
    nucleus = ndi.binary_fill_holes(ndi.binary_opening(nucleus)) & m
    if nucleus.sum() < min_fraction * m.sum():
        return np.zeros(m.shape, bool)
    return nucleus


def count_lobes(nucleus: np.ndarray, rel: float = 0.4, min_core: int = 3) -> int:
    """Number of lobes of a nucleus (``HxW``): the parts thicker than ``rel`` times its thickest point.
    Thin chromatin bridges between the lobes of a segmented neutrophil fall below it.

    >>> yy, xx = np.mgrid[:30, :60]
    >>> lobes = [(yy - 15) ** 2 + (xx - cx) ** 2 < 36 for cx in (10, 30, 50)]
    >>> bridge = (abs(yy - 15) <= 1) & (xx > 10) & (xx < 50)
    >>> count_lobes(lobes[0] | lobes[1] | lobes[2] | bridge), count_lobes(lobes[1])
    (3, 1)
    """
    n = np.asarray(nucleus) != 0
    if not n.any():
        return 0
    dist = ndi.distance_transform_edt(np.pad(n, 1))
    cores, _ = ndi.label(dist > rel * dist.max(), structure=np.ones((3, 3)))
    sizes = np.bincount(cores.ravel())[1:]
    return int((sizes >= min_core).sum())


def assign_nuclei_cells(cells: Cells, nuclei: Cells, min_inside: float = 0.5) -> list[np.ndarray]:
    """Give each of the sparse ``nuclei`` to the cell of ``cells`` that holds most of its pixels, if that
    cell holds at least ``min_inside`` of them. Returns, per cell, the union of its nuclei clipped to the
    cell (``bool``, in the cell's box); a nucleus in no cell is dropped."""
    out = [np.zeros(m.shape, bool) for m in cells.masks]
    for nbox, nmask in zip(nuclei.boxes, nuclei.masks):
        size = int(nmask.sum())
        candidates = boxes_overlapping(cells.boxes, nbox)
        if not size or not len(candidates):
            continue
        shared = [pair_intersection(cells.boxes[k], cells.masks[k], nbox, nmask) for k in candidates]
        k = int(candidates[int(np.argmax(shared))])
        if max(shared) >= min_inside * size:
            out[k] |= paste_into(cells.boxes[k], cells.masks[k], nbox, nmask)
    return out


def cell_nuclei(image, cells: Cells, classes: list[str], learned: bool = True,
                nucleated: tuple[str, ...] = NUCLEATED) -> list[np.ndarray]:
    """The nucleus (``bool``, in the cell's box) of each of the sparse ``cells`` of ``image`` (``CHW``
    tensor or ``HWC`` array) whose class (``classes[i]``) is nucleated, empty for the others: the cell's
    learned nucleus (``cells.nuclei``, if ``learned``) where it has one, else the within-cell split."""
    out = []
    for i, (box, m) in enumerate(zip(cells.boxes, cells.masks)):
        if classes[i].lower() not in nucleated:
            out.append(np.zeros_like(m))
        elif learned and cells.nuclei is not None and cells.nuclei[i].any():
            out.append(cells.nuclei[i] & m)
        else:
            out.append(split_nucleus(crop_image(image, box), m))
    return out


def nuclei_for(image: torch.Tensor, masks: np.ndarray, classes: list[str], learned: np.ndarray | None = None,
               nucleated: tuple[str, ...] = NUCLEATED) -> np.ndarray:
    """Dense form of :func:`cell_nuclei`: ``N x H x W uint8`` nuclei of the cells of ``masks`` (``N x H x W``),
    ``learned`` (``N x H x W``, optional) taking precedence over the split."""
    masks = np.asarray(masks)
    h, w = masks.shape[1:]
    cells = Cells.from_result({"masks": masks, "labels": np.arange(len(masks)), "scores": np.zeros(len(masks)),
                               **({"nuclei": np.asarray(learned)} if learned is not None else {})}, h, w)
    out = np.zeros(masks.shape, np.uint8)
    for k, (x0, y0, x1, y1), n in zip(cells.labels, cells.boxes, cell_nuclei(image, cells, [classes[k] for k in cells.labels],
                                                                              nucleated=nucleated)):
        out[k, y0:y1, x0:x1] = n
    return out
