"""Red cells and platelets of a whole smear field, by stain and shape at the field's own scale.

No image here has red-cell outlines to learn from (Chula gives one point per cell, BCCD incomplete
boxes), so the finder is classical and scale-normalised, the way a technician reads a field: the field is
brought to :data:`REFERENCE_RED_PX` px per red-cell diameter (from its scale estimate or
``--pixel-size``), then

1. :func:`stain_maps` - the optical density of the green channel against the field's own background
   (red cells and stained cells absorb green) and how purple each pixel is (platelets and nuclei);
2. :func:`red_cell_labels` - Otsu foreground of the density, central pallor filled, white cells left
   out, touching and overlapping red cells split by a distance-transform watershed;
3. :func:`platelet_labels` - small purple objects outside red and white cells;
4. :func:`find_smear_cells` - both as :class:`~hemaseg.cells.Cells` at the field's size, classes
   ``red_cell`` and ``platelet``.

Every size is a fraction of a red cell, so the same settings hold at any magnification.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import apply_hysteresis_threshold, threshold_otsu
from skimage.morphology import disk, opening, remove_small_holes, remove_small_objects
from skimage.segmentation import watershed

from .cells import Cells, concat_cells
from .errors import SettingError

REFERENCE_RED_PX = 40.0  # red-cell diameter (px) the finder works at
RED_CELL, PLATELET = "red_cell", "platelet"
SMEAR_CLASSES = (RED_CELL, PLATELET)


@dataclass(frozen=True)
class SmearConfig:
    """Settings of the red-cell and platelet finder, in fractions of a normal red cell (at
    :data:`REFERENCE_RED_PX`), so they hold at any magnification.

    ``min_red_area`` / ``min_platelet_area`` / ``max_platelet_area``: object areas, in red-cell areas;
    ``seed_distance``: the least distance between two red cells' centres, in diameters (lower splits
    more); ``seed_depth``: a centre lies at least this deep inside the cell, in diameters;
    ``purple``: how much more a platelet pixel absorbs red than blue light (optical density);
    ``max_pallor``: the largest central pallor filled into its cell, in red-cell areas (a larger hole
    is background ringed by touching cells); ``platelet_stain``: the ``purple`` of a platelet's most
    stained pixel, in multiples of ``purple`` (faint specks and smudges stay out); ``pale``: pixels
    down to this fraction of the red-cell threshold belong to a cell when they touch it (pale cells
    and pale edges); ``pair_area`` / ``pair_elongation``: an object at least this many times the field's
    median red cell in area, and this many times longer than wide, is two stacked cells (:func:`split_pairs`)."""

    min_red_area: float = 0.2
    seed_distance: float = 0.3
    seed_depth: float = 0.12
    min_platelet_area: float = 0.012
    max_platelet_area: float = 0.4  # large platelets too (up to ~4.7 um): docs/benchmarks.md, issue 21
    purple: float = 0.06
    max_pallor: float = 0.6
    platelet_stain: float = 3.0
    pale: float = 0.6
    pair_area: float = 1.4
    pair_elongation: float = 1.3

    def __post_init__(self):
        for name in ("min_red_area", "seed_distance", "seed_depth", "min_platelet_area", "max_platelet_area", "purple", "max_pallor", "pale"):
            if not 0 < getattr(self, name) < 1:
                raise SettingError(f"{name} must lie between 0 and 1, got {getattr(self, name)}")
        if self.platelet_stain < 1:
            raise SettingError(f"platelet_stain must be 1 or more, got {self.platelet_stain}")
        if self.pair_area <= 1 or self.pair_elongation < 1:
            raise SettingError(f"pair_area must be over 1 and pair_elongation 1 or more, got {self.pair_area}, {self.pair_elongation}")
        if self.min_platelet_area >= self.max_platelet_area:
            raise SettingError("min_platelet_area must be smaller than max_platelet_area")


def red_area(diameter: float = REFERENCE_RED_PX) -> float:
    """Area (px) of a round red cell of ``diameter`` px.

    >>> round(red_area(40.0))
    1257
    """
    return float(np.pi * diameter**2 / 4)


def stain_maps(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(density, purple)`` of an ``HxWx3 uint8`` field, both ``HxW float32``: ``density`` the optical
    density of the green channel against the field's background (its brightest decile), ``purple`` the
    optical density of red minus that of blue: above 0 on platelets and nuclei (they absorb red light and
    let blue through), below on red cells (they let red through; clipped to 0).

    >>> rgb = np.full((4, 4, 3), 220, np.uint8); rgb[0, 0] = (180, 100, 140); rgb[1, 1] = (130, 90, 190)
    >>> d, p = stain_maps(rgb)
    >>> bool(d[0, 0] > 0.5 and d[3, 3] < 0.01), bool(p[1, 1] > 0.3 and p[0, 0] == 0)
    (True, True)
    """
    x = rgb.astype(np.float32) + 1.0
    od = np.log(np.percentile(x.reshape(-1, 3), 90, axis=0) / x)  # per channel, 0 on the background
    return od[..., 1].clip(0, None), (od[..., 0] - od[..., 2]).clip(0, None)


def red_cell_labels(density: np.ndarray, purple: np.ndarray, exclude: np.ndarray | None = None,
                    cfg: SmearConfig = SmearConfig()) -> np.ndarray:
    """Label image of the red cells of a field at the reference scale (``HxW`` maps of :func:`stain_maps`).
    ``exclude``: ``HxW bool`` pixels of cells found otherwise (white cells): an object lying mostly on
    them is not a red cell."""
    other = purple > 2 * cfg.purple  # platelets and nuclei are not red-cell pixels
    if exclude is not None:
        other |= ndi.binary_dilation(exclude, iterations=2)
    rest = density[~other]
    if rest.size == 0 or np.ptp(rest) < 1e-3:
        return np.zeros(density.shape, np.int32)
    t = threshold_otsu(rest)  # red cells against the background, the stained others left out
    # a pale cell is kept where it touches its own darker rim: hysteresis between ``pale`` x t and t
    fg = apply_hysteresis_threshold(density, cfg.pale * t, t)
    # the central pallor belongs to its cell; a larger hole is background ringed by touching cells
    fg = remove_small_holes(opening(fg, disk(1)), max_size=int(cfg.max_pallor * red_area()))
    fg &= ~other
    fg = remove_small_objects(fg, max_size=int(cfg.min_red_area * red_area()))
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg), 1.5)
    peaks = peak_local_max(dist, min_distance=max(2, round(cfg.seed_distance * REFERENCE_RED_PX)),
                           threshold_abs=cfg.seed_depth * REFERENCE_RED_PX, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    lab = watershed(-dist, markers, mask=fg)
    return split_pairs(_drop_small(lab, cfg.min_red_area * red_area()), cfg)


def split_pairs(lab: np.ndarray, cfg: SmearConfig = SmearConfig()) -> np.ndarray:
    """``lab`` (``HxW`` red cells at the reference scale) with each object that is two cells, one lying on the
    other, split in two. A distance-transform watershed finds one cell in two discs whose union is nearly
    round (no neck between them); such an object is larger than a cell (``cfg.pair_area`` times the
    median of the field's objects not cut by the frame) and longer than wide (``cfg.pair_elongation``,
    major / minor axis), where a macrocyte is round and an elliptocyte no larger than its neighbours. It is
    split between two seeds on its long axis, one cell radius in from each end (each pixel to the nearer
    seed within the object: for two equal discs, the chord where they overlap); a split leaving a part
    under half a cell is not made. Objects cut by the frame are left as they are.

    >>> yy, xx = np.mgrid[:100, :200]
    >>> disc = lambda y, x, r=14: (yy - y) ** 2 + (xx - x) ** 2 <= r ** 2
    >>> lab = np.zeros((100, 200), int)
    >>> for k, x in enumerate((20, 55, 90, 125, 160)): lab[disc(25, x)] = k + 1
    >>> lab[disc(70, 40) | disc(70, 56)] = 6  # two stacked cells found as one
    >>> lab[((yy - 70) / 10) ** 2 + ((xx - 100) / 22) ** 2 <= 1] = 7  # an elliptocyte
    >>> lab[disc(70, 160, 18)] = 8  # a macrocyte
    >>> out = split_pairs(lab); int(out.max()), np.bincount(out[70, 30:70]).nonzero()[0].tolist()
    (9, [6, 9])
    """
    from skimage.measure import regionprops

    props = regionprops(lab)
    if not props:
        return lab
    h, w = lab.shape
    inside = [p for p in props if p.bbox[0] > 0 and p.bbox[1] > 0 and p.bbox[2] < h and p.bbox[3] < w]
    median = float(np.median([p.area for p in inside])) if len(inside) >= 5 else red_area()
    out, nxt = lab.copy(), int(lab.max()) + 1
    for p in inside:
        major, minor = p.axis_major_length, p.axis_minor_length
        if p.area < cfg.pair_area * median or major < cfg.pair_elongation * max(minor, 1e-6):
            continue
        y0, x0 = p.bbox[:2]
        obj = p.image
        ys, xs = np.nonzero(obj)
        cov = np.cov(np.stack([ys, xs]).astype(np.float64))
        axis = np.linalg.eigh(cov)[1][:, -1]  # (dy, dx) of the long axis
        cy, cx = ys.mean(), xs.mean()
        reach = (major - minor) / 2
        seeds = [(int(round(cy + t * axis[0])), int(round(cx + t * axis[1]))) for t in (-reach, reach)]
        if not all(0 <= a < obj.shape[0] and 0 <= b < obj.shape[1] and obj[a, b] for a, b in seeds):
            continue
        markers = np.zeros(obj.shape, np.int32)
        markers[seeds[0]], markers[seeds[1]] = 1, 2
        halves = watershed(np.zeros(obj.shape), markers, mask=obj)  # each pixel to the nearer seed, within the object
        if min((halves == 1).sum(), (halves == 2).sum()) < 0.5 * median:
            continue
        region = out[y0: y0 + obj.shape[0], x0: x0 + obj.shape[1]]
        region[halves == 2] = nxt
        nxt += 1
    return _renumber(out) if nxt > int(lab.max()) + 1 else out


def platelet_labels(purple: np.ndarray, taken: np.ndarray, cfg: SmearConfig = SmearConfig()) -> np.ndarray:
    """Label image of the platelets at the reference scale: purple objects (``purple`` of :func:`stain_maps`
    over ``cfg.purple``) of a platelet's size, not on ``taken`` (``HxW bool``: red and white cells)."""
    spots = ndi.binary_closing(purple > cfg.purple, iterations=1)
    lab, _ = ndi.label(spots)
    if not lab.max():
        return lab.astype(np.int32)
    area = np.bincount(lab.ravel())
    on_cells = np.bincount(lab.ravel(), weights=taken.ravel().astype(np.float64))
    stain = np.zeros(len(area))  # its darkest (most purple) pixel; purple >= 0
    on = lab > 0
    np.maximum.at(stain, lab[on], purple[on])
    ref = red_area()
    keep = ((area >= cfg.min_platelet_area * ref) & (area <= cfg.max_platelet_area * ref) & (on_cells < 0.5 * area)
            & (stain >= cfg.platelet_stain * cfg.purple))  # a platelet has a densely stained core, a speck has not
    keep[0] = False
    out = np.where(keep[lab], lab, 0)
    return _renumber(out)


def _nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``a`` (``HxW``) resized to ``size`` by taking, for each output pixel, the input pixel under its centre.

    >>> _nearest(np.array([[1, 2], [3, 4]]), (4, 4))[:, 1].tolist(), _nearest(np.arange(16).reshape(4, 4), (2, 2)).tolist()
    ([1, 1, 3, 3], [[5, 7], [13, 15]])
    """
    if a.shape == tuple(size):
        return a
    rows = ((np.arange(size[0]) + 0.5) * a.shape[0] / size[0]).astype(int).clip(0, a.shape[0] - 1)
    cols = ((np.arange(size[1]) + 0.5) * a.shape[1] / size[1]).astype(int).clip(0, a.shape[1] - 1)
    return a[rows][:, cols]


def _drop_small(lab: np.ndarray, min_area: float) -> np.ndarray:
    area = np.bincount(lab.ravel())
    keep = area >= min_area
    keep[0] = False
    return _renumber(np.where(keep[lab], lab, 0))


def _renumber(lab: np.ndarray) -> np.ndarray:
    ids = np.unique(lab)
    lut = np.zeros(int(lab.max()) + 1, np.int32)
    lut[ids] = np.arange(len(ids))
    return lut[lab]


def find_smear_cells(rgb: np.ndarray, red_cell_px: float, exclude: np.ndarray | None = None,
                     classes: tuple[str, ...] = SMEAR_CLASSES, cfg: SmearConfig = SmearConfig()) -> Cells:
    """The red cells and platelets of an ``HxWx3 uint8`` field whose red cells are ``red_cell_px`` px
    wide, as :class:`~hemaseg.cells.Cells` of the field (labels: 1-based indices of ``red_cell`` and
    ``platelet`` in ``classes``; score 1). ``exclude``: ``HxW bool`` pixels of white cells."""
    if not red_cell_px or red_cell_px <= 0:
        raise SettingError(f"red-cell diameter must be positive, got {red_cell_px}")
    h, w = rgb.shape[:2]
    f = REFERENCE_RED_PX / red_cell_px
    size = (max(1, round(h * f)), max(1, round(w * f)))
    small = rgb if size == (h, w) else np.asarray(Image.fromarray(rgb).resize(size[::-1], Image.Resampling.BILINEAR))
    ex = None if exclude is None else _nearest(exclude, size)
    density, purple = stain_maps(small)
    red = red_cell_labels(density, purple, ex, cfg)
    taken = red > 0 if ex is None else (red > 0) | ex
    plt = platelet_labels(purple, taken, cfg)
    parts = []
    for lab, name in ((red, RED_CELL), (plt, PLATELET)):
        full = _nearest(lab, (h, w))
        n = int(lab.max())
        parts.append(Cells.from_labels(full, np.arange(1, n + 1), np.full(n, classes.index(name) + 1)))
    return concat_cells(parts)


FRAME_SHARE = 0.8  # a cell cut by the frame counts when this share of a whole one is in view (see counted_cells)


def cut_by_frame(cells: Cells) -> np.ndarray:
    """``N bool``: which cells touch the image's edge (their box reaches it).

    >>> lab = np.zeros((8, 8), int); lab[0:3, 2:5] = 1; lab[3:6, 3:6] = 2
    >>> cut_by_frame(Cells.from_labels(lab)).tolist()
    [True, False]
    """
    b = cells.boxes.reshape(-1, 4)
    return (b[:, 0] <= 0) | (b[:, 1] <= 0) | (b[:, 2] >= cells.width) | (b[:, 3] >= cells.height)


def under_white_cells(cells: Cells, names: Sequence[str], reach: float = 0.1) -> np.ndarray:
    """``N bool``: the red cells and platelets (``names[i]``) next to one of the field's other cells (the
    method's white cells, which lie over them: the part under a white cell is not seen) - within ``reach``
    of a red-cell diameter (the median red cell's), as the finder leaves a gap of a twentieth of a
    diameter around white cells (:func:`red_cell_labels`).

    >>> lab = np.zeros((10, 40), int); lab[2:8, 2:8] = 1; lab[2:8, 8:14] = 2; lab[2:8, 22:28] = 3; lab[2:8, 32:38] = 4  # 1 touches the white cell 2
    >>> under_white_cells(Cells.from_labels(lab), ["red_cell", "cell", "red_cell", "red_cell"]).tolist()
    [True, False, False, False]
    """
    smear = np.array([n in SMEAR_CLASSES for n in names], bool)
    out = np.zeros(len(cells), bool)
    if smear.all() or not smear.any():
        return out
    white = np.zeros((cells.height, cells.width), bool)
    for (x0, y0, x1, y1), m, s in zip(cells.boxes, cells.masks, smear):
        if not s:
            white[y0:y1, x0:x1] |= m
    red = [i for i, n in enumerate(names) if n == RED_CELL]
    diameter = 2 * np.sqrt(np.median([cells.masks[i].sum() for i in red]) / np.pi) if red else 0.0
    near = ndi.distance_transform_edt(~white) <= max(1.5, reach * diameter)  # the white cells and a rim around them
    for i in np.nonzero(smear)[0]:
        x0, y0, x1, y1 = (int(v) for v in cells.boxes[i])
        out[i] = bool((cells.masks[i] & near[y0:y1, x0:x1]).any())
    return out


def counted_cells(cells: Cells, names: Sequence[str], share: float = FRAME_SHARE) -> np.ndarray:
    """``N bool``: which cells a field's count takes. A red cell or platelet (``names[i]``) cut by the frame,
    or partly under a white cell (:func:`under_white_cells`), counts when at least ``share`` of a whole one
    is in view - its area against the median area of the field's whole cells of its class - as a reader
    counts what can still be judged and leaves slivers out; whole ones always count. Other classes (the
    method's white cells) always count.

    On Chula RBC-12's training fields the annotators pointed at half of the cut red cells showing four
    fifths of a cell, hardly any under half, and at nearly every whole one (benchmarks/frame_share.py), hence
    :data:`FRAME_SHARE`. A red cell half under a white cell looks like a fragment: on other labs' fields,
    where white cells lie among red ones, a counted red cell touching a white cell was called a
    schistocyte four times as often as one that does not (docs/benchmarks.md, issue 21).

    >>> lab = np.zeros((20, 30), int); lab[2:8, 2:8] = 1; lab[10:16, 2:8] = 2; lab[0:5, 12:18] = 3; lab[0:2, 22:28] = 4
    >>> counted_cells(Cells.from_labels(lab), ["red_cell"] * 4).tolist()  # the 5/6 in view counts, the 1/3 not
    [True, True, True, False]
    >>> lab[10:16, 8:20] = 5; lab[10:16, 20:23] = 6  # a white cell, touching cell 2 and cell 6 (half a cell in view)
    >>> counted_cells(Cells.from_labels(lab), ["red_cell"] * 4 + ["cell", "red_cell"]).tolist()
    [True, True, True, False, True, False]
    """
    if not 0 < share <= 1:
        raise SettingError(f"share must lie in (0, 1], got {share}")
    keep = np.ones(len(cells), bool)
    if not len(cells):
        return keep
    cut = cut_by_frame(cells) | under_white_cells(cells, names)
    area = np.array([m.sum() for m in cells.masks], np.float64)
    for cls in SMEAR_CLASSES:
        of = np.array([n == cls for n in names], bool)
        if not (of & cut).any():
            continue
        ref = area[of & ~cut] if (of & ~cut).any() else area[of]
        keep[of & cut] = area[of & cut] >= share * np.median(ref)
    return keep


def is_counted(row: dict) -> bool:
    """Whether a cells-CSV row (or the station's stored measurements) is counted: its ``counted`` column,
    true where the column is missing (files written before it).

    >>> is_counted({"counted": "False"}), is_counted({"counted": True}), is_counted({})
    (False, True, True)
    """
    return str(row.get("counted", True)) not in ("False", "0", "false")


RED_COLUMNS = ("elongation", "pallor_fraction")  # per red cell, in the cells CSV


def red_cell_measures(rgb: np.ndarray, cells: Cells, names: Sequence[str]) -> list[dict]:
    """Per cell of ``cells`` (of the ``HxWx3 uint8`` field ``rgb``), for red cells (``names[i]``) only:
    ``elongation`` (major / minor axis of the cell's ellipse: 1 round, over 2 an elliptocyte's) and
    ``pallor_fraction`` (the share of the cell paler than half its own rim's stain density: about 0.1 in a
    normal cell's central pallor, 0 in a spherocyte, over a third in a hypochromic one). Other cells get
    an empty dict.

    >>> rgb = np.full((40, 40, 3), 235, np.uint8); yy, xx = np.mgrid[:40, :40]; d2 = (yy - 20) ** 2 + (xx - 20) ** 2
    >>> rgb[d2 <= 15 ** 2] = (200, 110, 130); rgb[d2 <= 6 ** 2] = (228, 215, 215)
    >>> m = d2 <= 15 ** 2; c = Cells(40, 40, np.array([[0, 0, 40, 40]]), [m], np.ones(1), np.ones(1, np.int64))
    >>> r = red_cell_measures(rgb, c, ["red_cell"])[0]; r["elongation"], 0.1 < r["pallor_fraction"] < 0.25
    (1.0, True)
    """
    from skimage.measure import regionprops

    density, _ = stain_maps(rgb)
    out = []
    for (x0, y0, x1, y1), m, name in zip(cells.boxes, cells.masks, names):
        if name != RED_CELL or not m.any():
            out.append({})
            continue
        p = regionprops(m.astype(np.uint8))[0]
        d = density[y0:y1, x0:x1][m]
        rim = np.percentile(d, 90)
        out.append({"elongation": round(float(p.axis_major_length / max(p.axis_minor_length, 1e-6)), 3),
                    "pallor_fraction": round(float((d < 0.5 * rim).mean()), 3) if rim > 0 else 0.0})
    return out


THICK_TOUCHING = 0.5  # over half the red cells touching another: too thick to read single cells
THIN_COVERAGE = 0.15  # red cells on under 15% of the field: too thin (the feathered edge)


def smear_quality(cells: Cells, names: Sequence[str]) -> dict:
    """Where in the smear a field lies, from its red cells (``names[i]`` the class of cell ``i``):
    ``red_coverage`` (share of the field they cover), ``red_touching`` (share of them touching another)
    and ``smear_hint``: ``thick`` (over :data:`THICK_TOUCHING` touching: cells overlap, not the place to
    count or grade them), ``thin`` (under :data:`THIN_COVERAGE` covered: the feathered edge, where cells
    flatten and lose their pallor) or empty. A rule of thumb after the ICSH advice to read where red cells
    just touch, not a measured grade.

    >>> lab = np.zeros((10, 20), int); lab[1:4, 1:4] = 1; lab[1:4, 4:7] = 2; lab[6:9, 12:15] = 3
    >>> q = smear_quality(Cells.from_labels(lab), ["red_cell"] * 3); q["red_touching"], q["smear_hint"]
    (0.667, 'thick')
    """
    red = cells.select(np.array([n == RED_CELL for n in names], bool)) if len(cells) else cells
    if not len(red):
        return {"red_coverage": 0.0, "red_touching": None, "smear_hint": "thin"}
    lab = red.label_image()
    pairs = set()
    for a, b in ((lab[:, :-1], lab[:, 1:]), (lab[:-1, :], lab[1:, :])):
        edge = (a != b) & (a > 0) & (b > 0)
        pairs |= set(zip(a[edge].tolist(), b[edge].tolist()))
    touching = {i for pair in pairs for i in pair}
    coverage, share = float((lab > 0).mean()), len(touching) / len(red)
    hint = "thick" if share > THICK_TOUCHING else "thin" if coverage < THIN_COVERAGE else ""
    return {"red_coverage": round(coverage, 3), "red_touching": round(share, 3), "smear_hint": hint}


# --------------------------------------------------------------------------------- morphology
MORPHOLOGY_CLASSES = ("normal", "macrocyte", "microcyte", "spherocyte", "target", "stomatocyte", "ovalocyte",
                      "teardrop", "burr", "schistocyte", "hypochromia", "elliptocyte")  # Chula RBC-12's, less uncategorised
MORPHOLOGY_COLUMNS = ("morphology", "morphology_confidence")  # per red cell, in the cells CSV

# ICSH 2015 grading (Palmer et al., Int J Lab Hematol 37:287, table 1) as the share of red cells, in %,
# from which a class is graded 1+, 2+, 3+ (below the first: none). Size and colour: 11-20 / 21-50 / >50;
# shapes: 5-20 / 21-50 / >50; schistocytes: under 1 / 1-2 / over 2 (any seen is 1+). Percentages are
# rounded to one decimal first, so the half-way bounds put a whole-number count in ICSH's ranges.
ICSH_GRADES: dict[str, tuple[float, float, float]] = {
    **{c: (10.5, 20.5, 50.5) for c in ("macrocyte", "microcyte", "hypochromia")},
    **{c: (4.5, 20.5, 50.5) for c in ("spherocyte", "target", "stomatocyte", "ovalocyte", "teardrop", "burr", "elliptocyte")},
    "schistocyte": (0.05, 1.0, 2.05),
}
GRADES = ("none", "1+", "2+", "3+")
# the bundled classifier is unsure of a cell under its own threshold (models/redcells.pt: 0.66, the lowest
# calling 95% of its calibration cells right); of a case's red cells, it is unsure of 31% on the held-out
# fields of the lab it learned from and of over half on other labs' images (PBC 55%, BCCD 71%:
# docs/benchmarks.md, issue 21), where its classes and grades do not hold
UNSURE_BELOW = 0.66
MOSTLY_UNSURE = 0.5  # unsure of more than this share of a case's red cells: its grades are flagged


def icsh_grade(morphology: str, percent: float) -> str:
    """The ICSH grade (:data:`GRADES`) of ``percent`` % red cells of class ``morphology``
    (:data:`ICSH_GRADES`; ``normal`` and unknown classes are not graded: empty).

    >>> icsh_grade("target", 4.0), icsh_grade("target", 12.0), icsh_grade("microcyte", 12.0), icsh_grade("schistocyte", 1.5)
    ('none', '1+', '1+', '2+')
    >>> icsh_grade("spherocyte", 60), icsh_grade("normal", 90)
    ('3+', '')
    """
    bounds = ICSH_GRADES.get(morphology)
    if bounds is None:
        return ""
    p = round(float(percent), 1)
    return GRADES[sum(p >= b for b in bounds)]


def morphology_grades(morphologies: Sequence[str]) -> list[dict]:
    """Per class of :data:`MORPHOLOGY_CLASSES`: its ``cells``, their ``percent`` of all red cells given
    (``morphologies``: one class per red cell) and the ICSH ``grade`` (:func:`icsh_grade`).

    >>> rows = morphology_grades(["normal"] * 90 + ["target"] * 8 + ["schistocyte"] * 2)
    >>> [(r["morphology"], r["cells"], r["percent"], r["grade"]) for r in rows if r["cells"]]
    [('normal', 90, 90.0, ''), ('target', 8, 8.0, '1+'), ('schistocyte', 2, 2.0, '2+')]
    """
    n = len(morphologies)
    counts = Counter(morphologies)
    out = []
    for c in MORPHOLOGY_CLASSES:
        k = counts[c]
        percent = round(100 * k / n, 1) if n else 0.0
        out.append({"morphology": c, "cells": k, "percent": percent, "grade": icsh_grade(c, percent) if n else ""})
    return out


def unsure_share(confidences: Sequence[float], least: int = 30) -> float | None:
    """The share of red cells whose morphology ``confidences`` lie under :data:`UNSURE_BELOW`; None under
    ``least`` cells (too few to say).

    >>> unsure_share([0.4] * 20 + [0.9] * 20), unsure_share([0.9] * 10)
    (0.5, None)
    """
    if len(confidences) < least:
        return None
    return round(float(np.mean(np.asarray(confidences, np.float64) < UNSURE_BELOW)), 3)


def red_morphology(classifier, rgb: np.ndarray, cells: Cells, names: Sequence[str], pixel_size: float) -> list[dict]:
    """Per cell of ``cells`` (of the ``HxWx3 uint8`` field ``rgb``, ``pixel_size`` um per px), for red cells
    (``names[i]``) only: ``morphology``, the most probable class of ``classifier`` (a
    :class:`~hemaseg.celltypes.CellTypeClassifier` of :data:`MORPHOLOGY_CLASSES`, e.g.
    :func:`bundled_morphology`) for the cell seen centred on its mask's centroid, as it learned them, and
    ``morphology_confidence``, its probability. Other cells get an empty dict."""
    from .celltypes import context_crops

    red = [k for k, n in enumerate(names) if n == RED_CELL and cells.masks[k].any()]
    out: list[dict] = [{} for _ in names]
    if not red:
        return out
    centres = []
    for k in red:
        ys, xs = np.nonzero(cells.masks[k])
        centres.append((cells.boxes[k][1] + ys.mean(), cells.boxes[k][0] + xs.mean()))
    crops = context_crops(rgb, centres, pixel_size, classifier.cfg)  # the field resampled once
    for k, call in zip(red, classifier.calls(classifier.probabilities(crops))):
        out[k] = {"morphology": call.top, "morphology_confidence": call.confidence}
    return out


@functools.lru_cache(maxsize=1)
def bundled_morphology():
    """The red-cell morphology classifier shipped with the package (``models/redcells.pt``, see
    models/MODEL_CARD.md), or None if this installation has none. Loaded once (``weights_only``: no code runs)."""
    from .celltypes import CellTypeClassifier
    from .model import BUNDLED_MORPHOLOGY

    if not BUNDLED_MORPHOLOGY.is_file():
        return None
    from .backbones import EfficientNetLite0, fold_batchnorm

    clf = CellTypeClassifier.load(BUNDLED_MORPHOLOGY)
    if isinstance(clf.net.body, EfficientNetLite0):
        fold_batchnorm(clf.net.body)  # inference only: fewer steps, the same function
    clf.net.to(memory_format=torch.channels_last)  # a quarter faster on CPU; probabilities within 1e-6
    return clf
