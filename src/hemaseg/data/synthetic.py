"""Synthetic blood smears with exact ground truth.

Each image is painted cell by cell (painter's algorithm), so the ground truth is exactly what is
visible: touching and overlapping red cells (the later one on top), white cells with a segmented
(2-5 lobes), round or kidney-shaped nucleus and their cytoplasm, and platelets; then stain and
illumination variation, blur and noise are applied to the image only.

Classes: ``red_cell`` (1), ``white_cell`` (2), ``platelet`` (3). Nuclei belong to white cells.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .io import write_image, write_text

CLASSES = ("red_cell", "white_cell", "platelet")
RED, WHITE, PLATELET = 1, 2, 3


@dataclass(frozen=True)
class SynthConfig:
    """Size and content of a synthetic smear. Ranges are ``(low, high)``, inclusive."""

    height: int = 192
    width: int = 192
    red_cells: tuple[int, int] = (15, 45)
    white_cells: tuple[int, int] = (1, 2)
    platelets: tuple[int, int] = (1, 6)
    red_radius: tuple[float, float] = (8.0, 11.0)
    white_radius: tuple[float, float] = (15.0, 21.0)
    platelet_radius: tuple[float, float] = (1.8, 3.2)
    overlap: float = 0.25  # how far two cells may overlap, as a fraction of the sum of their radii
    blur: tuple[float, float] = (0.3, 1.0)
    noise: tuple[float, float] = (0.005, 0.025)
    min_visible: int = 12  # an instance with fewer visible pixels is not in the ground truth

    @classmethod
    def field(cls, height: int, width: int, red: float = 30, white: float = 1.5, platelets: float = 3.5, **kw) -> SynthConfig:
        """A whole smear field of any size with ``red``, ``white`` and ``platelets`` cells per 192x192 px
        (defaults: the mean of the default image), counts rounded down.

        >>> SynthConfig.field(384, 384).red_cells, SynthConfig.field(2048, 2048, red=6).red_cells
        ((120, 120), (682, 682))
        """
        k = height * width / (192 * 192)
        n = lambda per_192: (max(0, int(per_192 * k)),) * 2  # noqa: E731
        return cls(height=height, width=width, red_cells=n(red), white_cells=n(white), platelets=n(platelets), **kw)

    @classmethod
    def wbc_field(cls, height: int = 480, width: int = 640, white: tuple[int, int] = (1, 3)) -> SynthConfig:
        """A smear field at the magnification of white-cell crop datasets (Zheng et al.'s dataset1): white
        cells 68-88 px wide, red cells 34-42 px, 60-90 red cells and 3-8 platelets per 640x480 px (counts
        scaled to the area), ``white`` white cells.

        >>> c = SynthConfig.wbc_field(240, 320); c.red_cells, c.white_cells
        ((15, 22), (1, 3))
        """
        k = height * width / (480 * 640)
        return cls(height=height, width=width, red_cells=(int(60 * k), int(90 * k)), white_cells=white,
                   platelets=(int(3 * k), int(8 * k)), red_radius=(17.0, 21.0), white_radius=(34.0, 44.0),
                   platelet_radius=(4.0, 7.0))


@dataclass
class SynthSample:
    """One synthetic smear: ``image`` HWC uint8 RGB, ``labels`` HxW uint16 (0 background, 1..N),
    ``classes`` int64[N] class ids (1-based, see :data:`CLASSES`), ``nuclei`` HxW uint16 holding the
    id of the white cell each nucleus pixel belongs to."""

    image: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    nuclei: np.ndarray


def _shape(rng: np.random.Generator, cy: float, cx: float, r: float, h: int, w: int,
           wobble: float = 0.04, ellipse: float = 0.08):
    """A soft-edged blob: returns (slice_y, slice_x, alpha in [0,1], normalised radius d/r(theta))."""
    pad = int(np.ceil(r * (1 + ellipse + 3 * wobble))) + 2
    y0, y1 = max(0, int(cy) - pad), min(h, int(cy) + pad + 1)
    x0, x1 = max(0, int(cx) - pad), min(w, int(cx) + pad + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    d = np.hypot(dy, dx)
    th = np.arctan2(dy, dx)
    rr = r * (1 + ellipse * rng.uniform(-1, 1) * np.cos(2 * (th - rng.uniform(0, np.pi))))
    for k in (3, 4, 5):
        rr = rr * (1 + wobble / k * rng.uniform(-1, 1) * np.cos(k * th + rng.uniform(0, 2 * np.pi)))
    alpha = np.clip(rr - d + 0.5, 0, 1)
    return slice(y0, y1), slice(x0, x1), alpha, d / rr


def _disk_union(shape_hw, centres, radii) -> np.ndarray:
    """Soft union of disks on a local grid (for nuclei)."""
    h, w = shape_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    alpha = np.zeros((h, w), np.float32)
    for (cy, cx), r in zip(centres, radii):
        alpha = np.maximum(alpha, np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1))
    return alpha


def _nucleus(rng: np.random.Generator, kind: str, shape_hw, cy: float, cx: float, r: float) -> np.ndarray:
    """Nucleus alpha on the cell's local grid; ``(cy, cx)`` is the cell centre in local coordinates."""
    if kind == "segmented":
        lobes = int(rng.integers(2, 6))
        start = rng.uniform(0, 2 * np.pi)
        span = rng.uniform(0.6, 1.2) * np.pi
        arc = 0.42 * r
        angles = start + np.linspace(0, span, lobes)
        lobe_r = rng.uniform(0.2, 0.27, lobes) * r
        centres = [(cy + arc * np.sin(a), cx + arc * np.cos(a)) for a in angles]
        # thin chromatin bridges between consecutive lobes
        fine = start + np.linspace(0, span, lobes * 6)
        bridges = [(cy + arc * np.sin(a), cx + arc * np.cos(a)) for a in fine]
        return np.maximum(_disk_union(shape_hw, centres, lobe_r), 0.9 * _disk_union(shape_hw, bridges, [0.07 * r] * len(bridges)))
    if kind == "round":
        off = rng.uniform(0, 0.12 * r, 2)
        return _disk_union(shape_hw, [(cy + off[0], cx + off[1])], [rng.uniform(0.68, 0.8) * r])
    # kidney: a disk with a bite taken out of one side
    a = rng.uniform(0, 2 * np.pi)
    body = _disk_union(shape_hw, [(cy, cx)], [0.6 * r])
    bite = _disk_union(shape_hw, [(cy + 0.55 * r * np.sin(a), cx + 0.55 * r * np.cos(a))], [0.35 * r])
    return np.clip(body - bite, 0, 1)


def generate(rng: np.random.Generator, cfg: SynthConfig = SynthConfig()) -> SynthSample:
    """Paint one synthetic smear with ground truth.

    >>> s = generate(np.random.default_rng(0), SynthConfig(height=96, width=96))
    >>> s.image.shape, s.image.dtype, int(s.labels.max()) == len(s.classes)
    ((96, 96, 3), dtype('uint8'), True)
    """
    h, w = cfg.height, cfg.width
    background = np.array([0.92, 0.87, 0.84]) + rng.normal(0, 0.02, 3)
    img = np.broadcast_to(background, (h, w, 3)).astype(np.float32).copy()
    owner = np.zeros((h, w), np.int32)  # painted instance index + 1
    nucleus_owner = np.zeros((h, w), np.int32)
    kinds: list[int] = []
    placed: list[tuple[float, float, float]] = []

    def place(r: float) -> tuple[float, float] | None:
        for _ in range(60):
            cy, cx = rng.uniform(-0.3 * r, h + 0.3 * r), rng.uniform(-0.3 * r, w + 0.3 * r)
            if all(np.hypot(cy - py, cx - px) >= (1 - cfg.overlap) * (r + pr) for py, px, pr in placed):
                placed.append((cy, cx, r))
                return cy, cx
        return None

    red_tone = np.array([0.86, 0.45, 0.47]) + rng.normal(0, 0.03, 3)
    plan = ([RED] * int(rng.integers(cfg.red_cells[0], cfg.red_cells[1] + 1))
            + [WHITE] * int(rng.integers(cfg.white_cells[0], cfg.white_cells[1] + 1))
            + [PLATELET] * int(rng.integers(cfg.platelets[0], cfg.platelets[1] + 1)))
    # white cells are placed first (they claim space) but painted after the red cells, on top
    order = sorted(range(len(plan)), key=lambda i: {WHITE: 0, RED: 1, PLATELET: 2}[plan[i]])
    positions: dict[int, tuple[float, float, float]] = {}
    for i in order:
        kind = plan[i]
        r = {RED: rng.uniform(*cfg.red_radius), WHITE: rng.uniform(*cfg.white_radius),
             PLATELET: rng.uniform(*cfg.platelet_radius)}[kind]
        pos = place(r) if kind != PLATELET else (rng.uniform(0, h), rng.uniform(0, w))
        if pos is not None:
            positions[i] = (pos[0], pos[1], r)
    paint_order = [i for kind in (RED, WHITE, PLATELET) for i in range(len(plan)) if plan[i] == kind and i in positions]
    for i in paint_order:
        kind = plan[i]
        cy, cx, r = positions[i]
        wob = {RED: 0.04, WHITE: 0.06, PLATELET: 0.25}[kind]
        sy, sx, alpha, dn = _shape(rng, cy, cx, r, h, w, wobble=wob, ellipse=0.1 if kind != PLATELET else 0.3)
        if kind == RED:
            tone = red_tone + rng.normal(0, 0.015, 3)
            pallor = 0.55 * np.exp(-((dn / 0.45) ** 2))[..., None]
            rim = 0.12 * np.clip(dn - 0.75, 0, 0.25)[..., None] * 4
            colour = tone * (1 - pallor) + background * pallor - rim * 0.3
        elif kind == WHITE:
            style = rng.choice(["segmented", "round", "kidney"], p=[0.5, 0.3, 0.2])
            cyto = {"segmented": [0.80, 0.70, 0.82], "round": [0.66, 0.70, 0.88], "kidney": [0.74, 0.70, 0.84]}[style]
            cyto = np.array(cyto) + rng.normal(0, 0.03, 3)
            grain = ndi.gaussian_filter(rng.normal(0, 1, alpha.shape), 1.0)[..., None] * 0.03
            colour = cyto + grain
            nuc = _nucleus(rng, style, alpha.shape, cy - sy.start, cx - sx.start, r) * (alpha > 0.5)
            nuc_tone = np.array([0.36, 0.20, 0.50]) + rng.normal(0, 0.03, 3)
            colour = colour * (1 - nuc[..., None]) + nuc_tone * nuc[..., None]
            region = nucleus_owner[sy, sx]
            region[nuc > 0.5] = len(kinds) + 1
            region[(nuc <= 0.5) & (alpha > 0.5)] = 0  # a nucleus under a later cell is not visible
        else:
            colour = np.array([0.55, 0.38, 0.62]) + rng.normal(0, 0.04, 3)
        a = alpha[..., None]
        img[sy, sx] = img[sy, sx] * (1 - a) + colour * a
        region = owner[sy, sx]
        region[alpha > 0.5] = len(kinds) + 1
        if kind != WHITE:
            nucleus_owner[sy, sx][alpha > 0.5] = 0
        kinds.append(kind)

    # stain and illumination variation, blur and noise: image only
    img *= (1 + rng.normal(0, 0.04, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vign = 1 - rng.uniform(0, 0.15) * (((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2) * 2
    grad = 1 + rng.uniform(-0.05, 0.05) * (xx / w - 0.5) + rng.uniform(-0.05, 0.05) * (yy / h - 0.5)
    img *= (vign * grad)[..., None]
    sigma = rng.uniform(*cfg.blur)
    img = ndi.gaussian_filter(img, (sigma, sigma, 0))
    img += rng.normal(0, rng.uniform(*cfg.noise), img.shape)
    image = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)

    # keep instances with enough visible pixels, renumber 1..N
    counts = np.bincount(owner.ravel(), minlength=len(kinds) + 1)
    keep = [k for k in range(1, len(kinds) + 1) if counts[k] >= cfg.min_visible]
    remap = np.zeros(len(kinds) + 1, np.uint16)
    remap[keep] = np.arange(1, len(keep) + 1, dtype=np.uint16)
    labels = remap[owner]
    nuclei = remap[nucleus_owner] * (labels == remap[nucleus_owner])  # nucleus pixels inside their own cell
    classes = np.array([kinds[k - 1] for k in keep], dtype=np.int64)
    return SynthSample(image, labels.astype(np.uint16), classes, nuclei.astype(np.uint16))


def write_sample(root: str | Path, name: str, image: np.ndarray | None, labels: np.ndarray, class_names: list[str],
                 nuclei: np.ndarray | None = None) -> None:
    """Write one annotated image in hemaseg's instance layout under ``root``: ``images/NAME.png`` (HWC
    uint8; ``image=None``: the caller puts the image there), ``labels/NAME.png`` (HxW label image, 16-bit),
    ``labels/NAME.csv`` (``label,class``, one row per label ``1..N`` named by ``class_names``) and, when
    given, ``nuclei/NAME.png`` (HxW, each nucleus pixel holding its cell's label)."""
    root = Path(root)
    if image is not None:
        write_image(root / "images" / f"{name}.png", image)
    write_image(root / "labels" / f"{name}.png", labels.astype(np.uint16))
    if nuclei is not None:
        write_image(root / "nuclei" / f"{name}.png", nuclei.astype(np.uint16))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label", "class"])
    writer.writerows((i + 1, c) for i, c in enumerate(class_names))
    write_text(root / "labels" / f"{name}.csv", buf.getvalue())


def only(sample: SynthSample, annotate: dict[str, str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The sample's ground truth restricted to the classes in ``annotate`` (renamed to its values), the
    other cells left painted but unannotated, as in a crop dataset that outlines white cells only:
    ``(labels HxW, class names, nuclei HxW)``, renumbered ``1..N``."""
    keep = [i + 1 for i, c in enumerate(sample.classes) if CLASSES[c - 1] in annotate]
    lut = np.zeros(len(sample.classes) + 1, np.uint16)
    lut[keep] = np.arange(1, len(keep) + 1)
    names = [annotate[CLASSES[sample.classes[i - 1] - 1]] for i in keep]
    return lut[sample.labels], names, lut[sample.nuclei]


def write_dataset(out: str | Path, n: int, cfg: SynthConfig = SynthConfig(), seed: int = 0,
                  annotate: dict[str, str] | None = None) -> Path:
    """Write ``n`` smears with :func:`write_sample` (names ``synth_0000`` ...), annotating every cell or,
    with ``annotate`` (e.g. ``{"white_cell": "cell"}``), only those classes under those names (:func:`only`).
    Image ``k`` depends only on ``(seed, k)``, so a larger ``n`` extends a smaller set."""
    root = Path(out)
    for k in range(n):
        s = generate(np.random.default_rng([seed, k]), cfg)
        if annotate is None:
            labels, names, nuclei = s.labels, [CLASSES[c - 1] for c in s.classes], s.nuclei
        else:
            labels, names, nuclei = only(s, annotate)
        write_sample(root, f"synth_{k:04d}", s.image, labels, names, nuclei)
    return root
