"""Whole smear fields made from crops: context-aware augmentation for white cells.

Crop datasets such as Zheng et al.'s hold one white cell in the middle of a small frame, its red
neighbours unannotated. A model trained only on them learns "a big cell in the centre" and misses or
mis-outlines white cells in a whole field, where they sit anywhere, cut by the image edge, between
dozens of red cells and platelets. A *field* puts them there:

1. :func:`cut_cells` cuts each annotated cell out of its crop (its mask plus a feathered rim of its
   own surroundings, with its nucleus);
2. :func:`crop_tones` measures the crop's plasma and red-cell colours on its unannotated pixels;
3. :func:`red_field` paints a synthetic smear of red cells and platelets (:mod:`.synthetic`) in those
   colours, red cells sized to the white cells (diameter 0.4-0.55 of theirs, as 7-8 um red cells to
   12-18 um white cells), each field at its own density;
4. :func:`compose_field` pastes the cells at their own scale at random, non-overlapping places, some cut
   by the edge, and returns a contract ``(image, target)`` pair.

The painted red cells and platelets are background, as the unannotated ones around a crop's cell are,
so fields suit datasets that annotate white cells only (not ones whose classes include red cells).
All functions take a NumPy ``Generator``; arrays are ``HWC float32`` in ``[0, 1]`` unless stated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from ..errors import SettingError
from .contract import Target, make_target, tensor_to_image
from .synthetic import RED, SynthConfig, generate

#: Classes of datasets that annotate red cells themselves: a painted red field would contradict them.
ANNOTATES_RED = ("red_cell", "platelet")


@dataclass(frozen=True)
class Cutout:
    """One cell cut from its crop: ``image`` HWC float32 of its padded box, ``alpha`` HxW float32 (1 on
    the cell, fading to 0 over the rim), ``mask`` HxW bool, ``nucleus`` HxW bool or None, ``label``."""

    image: np.ndarray
    alpha: np.ndarray
    mask: np.ndarray
    nucleus: np.ndarray | None
    label: int

    @property
    def radius(self) -> float:
        """Radius of the disk of the same area, in pixels."""
        return float(np.sqrt(self.mask.sum() / np.pi))


def cut_cells(image: torch.Tensor, target: Target, rim: int = 3) -> list[Cutout]:
    """Cut every instance of a contract pair out of ``image`` (CHW float), with ``rim`` pixels of its
    surroundings that fade out (so the paste has the crop's own soft edge, not a hard mask edge).

    >>> from hemaseg.data.contract import make_target
    >>> m = np.zeros((1, 20, 20), np.uint8); m[0, 5:11, 8:12] = 1
    >>> c = cut_cells(torch.full((3, 20, 20), 0.5), make_target(m))[0]
    >>> c.image.shape, int(c.mask.sum()), c.nucleus, float(c.alpha.max()), float(c.alpha[0, 0])
    ((12, 10, 3), 24, None, 1.0, 0.0)
    """
    img = tensor_to_image(image).astype(np.float32) / 255
    h, w = img.shape[:2]
    masks = target["masks"].numpy().astype(bool)
    nuclei = target["nuclei"].numpy().astype(bool) if "nuclei" in target else None
    out = []
    for i, (x0, y0, x1, y1) in enumerate(target["boxes"].round().int().tolist()):
        if x1 <= x0 or y1 <= y0:
            continue
        y0, x0, y1, x1 = max(0, y0 - rim), max(0, x0 - rim), min(h, y1 + rim), min(w, x1 + rim)
        mask = masks[i, y0:y1, x0:x1]
        # 1 on the mask, then falling linearly to 0 at `rim` px from it
        alpha = np.clip(1 - ndi.distance_transform_edt(~mask) / rim, 0, 1).astype(np.float32)
        nucleus = nuclei[i, y0:y1, x0:x1] & mask if nuclei is not None else None
        out.append(Cutout(img[y0:y1, x0:x1].copy(), alpha, mask.copy(), nucleus, int(target["labels"][i])))
    return out


#: Plasma and red-cell colours of the synthetic smears (RGB in [0, 1]); the fallback of :func:`crop_tones`.
DEFAULT_TONES = (np.array([0.92, 0.87, 0.84], np.float32), np.array([0.86, 0.45, 0.47], np.float32))


def crop_tones(image: torch.Tensor, target: Target, min_pixels: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The crop's plasma and red-cell colours (RGB float): medians of the brightest 40% and the darkest
    30% of its pixels outside every annotated cell; :data:`DEFAULT_TONES` with fewer than ``min_pixels``.

    >>> img = torch.zeros(3, 10, 10); img[:, :, :5] = 0.9; img[0, :, 5:] = 0.8; img[1:, :, 5:] = 0.4
    >>> plasma, red = crop_tones(img, {"masks": torch.zeros(0, 10, 10, dtype=torch.uint8)}, min_pixels=10)
    >>> [round(float(v), 2) for v in (*plasma, *red)]
    [0.9, 0.9, 0.9, 0.8, 0.4, 0.4]
    """
    img = image.permute(1, 2, 0).numpy()
    free = ~target["masks"].bool().any(dim=0).numpy() if len(target["masks"]) else np.ones(img.shape[:2], bool)
    pixels = img[free]
    if len(pixels) < min_pixels:
        return DEFAULT_TONES
    order = np.argsort(pixels.mean(axis=1))
    n = len(order)
    red = np.median(pixels[order[: max(1, int(0.3 * n))]], axis=0)
    plasma = np.median(pixels[order[n - max(1, int(0.4 * n)):]], axis=0)
    return plasma.astype(np.float32), red.astype(np.float32)


def red_field(rng: np.random.Generator, height: int, width: int, red_radius: tuple[float, float],
              coverage: float, plasma: np.ndarray, red: np.ndarray) -> np.ndarray:
    """A synthetic smear of red cells (radius in ``red_radius``, covering about ``coverage`` of the
    field before overlaps are rejected) and platelets, recoloured so that its plasma and red cells take
    the colours ``plasma`` and ``red``: an HWC float32 image in [0, 1].

    >>> f = red_field(np.random.default_rng(0), 64, 80, (8, 10), 0.3, *DEFAULT_TONES)
    >>> f.shape, f.dtype, bool(0 <= f.min() and f.max() <= 1)
    ((64, 80, 3), dtype('float32'), True)
    """
    r_mean = (red_radius[0] + red_radius[1]) / 2
    n_red = int(round(coverage * height * width / (np.pi * r_mean**2)))
    cfg = SynthConfig(height=height, width=width, red_cells=(n_red, n_red), white_cells=(0, 0),
                      platelets=(0, max(1, n_red // 8)), red_radius=tuple(red_radius),
                      platelet_radius=(0.2 * r_mean, 0.34 * r_mean), min_visible=1)
    s = generate(rng, cfg)
    img = s.image.astype(np.float32) / 255
    bg = img[s.labels == 0]
    cells = img[np.isin(s.labels, 1 + np.flatnonzero(s.classes == RED))]
    if len(bg) == 0 or len(cells) == 0:
        return np.clip(img - np.median(img.reshape(-1, 3), axis=0) + plasma, 0, 1)
    src_bg, src_red = np.median(bg, axis=0), np.median(cells, axis=0)
    # per channel, the line through (synthetic plasma -> plasma) and (synthetic red -> red)
    span = src_red - src_bg
    gain = np.where(np.abs(span) > 0.02, (red - plasma) / np.where(np.abs(span) > 0.02, span, 1), 1.0)
    return np.clip(plasma + (img - src_bg) * gain, 0, 1).astype(np.float32)


@dataclass(frozen=True)
class FieldConfig:
    """How :func:`compose_field` builds a field: its side as a multiple of the cells' median diameter,
    how many cells it holds, how much of it red cells cover, and how far a cell may hang over the edge
    (a fraction of its box); and the ``rim`` of their own crop the cells are cut with (:func:`cut_cells`,
    by :class:`hemaseg.data.dataset.CellDataset`)."""

    side: tuple[float, float] = (2.5, 3.5)
    max_side: int = 512
    cells: tuple[int, int] = (1, 3)
    coverage: tuple[float, float] = (0.15, 0.45)
    red_ratio: tuple[float, float] = (0.4, 0.55)  # red-cell diameter / white-cell diameter
    overhang: float = 0.35
    rim: int = 3  # px of its own crop kept around each cell, fading out (cut_cells)

    def __post_init__(self):
        if self.rim < 1:
            raise SettingError(f"rim must be >= 1 px, got {self.rim}")


def compose_field(rng: np.random.Generator, cutouts: list[Cutout], tones: tuple[np.ndarray, np.ndarray],
                  cfg: FieldConfig = FieldConfig(), size: tuple[int, int] | None = None) -> tuple[torch.Tensor, Target]:
    """Paste ``cutouts`` (cells of one dataset, at their own scale) onto a :func:`red_field` in the
    colours ``tones`` = (plasma, red): a contract ``(image, target)`` pair whose instances are the pasted
    cells (with ``nuclei`` when every cutout has one) - the field's red cells and platelets are
    background. The field is ``size`` = (height, width), or of sides drawn by ``cfg``. A cell that finds no free place after 50 tries is left out; so is one that ends up with
    no pixel inside the field.

    >>> from hemaseg.data.contract import make_target
    >>> m = np.zeros((1, 40, 40), np.uint8); m[0, 10:30, 12:30] = 1
    >>> cells = cut_cells(torch.full((3, 40, 40), 0.4), make_target(m))
    >>> image, target = compose_field(np.random.default_rng(0), cells * 2, DEFAULT_TONES)
    >>> image.shape[0], len(target["masks"]), target["masks"].shape[1:] == image.shape[1:]
    (3, 2, True)
    """
    if not cutouts:
        raise SettingError("compose_field: no cells to paste")
    radius = float(np.median([c.radius for c in cutouts]))
    side = lambda: int(min(cfg.max_side, max(32, rng.uniform(*cfg.side) * 2 * radius)))  # noqa: E731
    h, w = size if size is not None else (side(), side())
    red_r = rng.uniform(*cfg.red_ratio) * radius
    plasma, red = tones
    img = red_field(rng, h, w, (0.9 * red_r, 1.1 * red_r), rng.uniform(*cfg.coverage), plasma, red)
    masks, nuclei, labels, taken = [], [], [], []
    for c in cutouts:
        bh, bw = c.mask.shape
        lo_y, lo_x = -int(cfg.overhang * bh), -int(cfg.overhang * bw)
        hi_y, hi_x = h - bh + int(cfg.overhang * bh), w - bw + int(cfg.overhang * bw)
        for _ in range(50):
            y, x = int(rng.integers(lo_y, max(lo_y, hi_y) + 1)), int(rng.integers(lo_x, max(lo_x, hi_x) + 1))
            if all(y + bh <= ty0 or ty1 <= y or x + bw <= tx0 or tx1 <= x for ty0, tx0, ty1, tx1 in taken):
                break
        else:
            continue
        # the part of the cutout's box inside the field
        fy0, fx0, fy1, fx1 = max(0, y), max(0, x), min(h, y + bh), min(w, x + bw)
        if fy1 <= fy0 or fx1 <= fx0:
            continue
        cy0, cx0 = fy0 - y, fx0 - x
        window = (slice(cy0, cy0 + fy1 - fy0), slice(cx0, cx0 + fx1 - fx0))
        if not c.mask[window].any():
            continue
        a = c.alpha[window][..., None]
        img[fy0:fy1, fx0:fx1] = img[fy0:fy1, fx0:fx1] * (1 - a) + c.image[window] * a
        m = np.zeros((h, w), np.uint8)
        m[fy0:fy1, fx0:fx1] = c.mask[window]
        masks.append(m)
        if c.nucleus is not None:
            n = np.zeros((h, w), np.uint8)
            n[fy0:fy1, fx0:fx1] = c.nucleus[window]
            nuclei.append(n)
        labels.append(c.label)
        taken.append((y, x, y + bh, x + bw))
    image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    stack = lambda ms: np.stack(ms) if ms else np.zeros((0, h, w), np.uint8)  # noqa: E731
    with_nuclei = len(nuclei) == len(masks) and any(c.nucleus is not None for c in cutouts)
    target = make_target(stack(masks), labels=np.array(labels, np.int64),
                         nuclei=stack(nuclei) if with_nuclei else None)
    return image, target
