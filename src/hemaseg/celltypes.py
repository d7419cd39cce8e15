"""White-cell types from the cell's image: a CNN on the segmented cell's crop, at one physical scale and
one stain, with calibrated probabilities and an ``unidentified`` bin.

The steps, each a short function:

1. :func:`context_crop` - a square window around the cell, resampled to ``TypeConfig.pixel_size`` (um per
   pixel: the image's own, from the scale estimate or the user) so that a lymphocyte is as large in every lab;
2. :func:`reinhard` - its colours matched to a reference stain (Reinhard et al. 2001: mean and spread of
   each CIE-Lab channel over the window), so that another lab's May-Grunwald-Giemsa or Wright stain
   looks like the one trained on;
3. :class:`TypeNet` (a torchvision ResNet-18, random weights) on the centre ``TypeConfig.size`` pixels;
4. the logits divided by a temperature fitted on held-out cells (:func:`fit_temperature`), so that a
   probability of 0.8 is right about 80% of the time; a cell whose best probability is under
   ``TypeConfig.threshold`` (chosen on the coverage/accuracy curve, :func:`choose_threshold`) is reported
   ``unidentified``, never forced.

Types (:data:`TYPES`) are those a CellaVision-kind review separates. Sources that label coarser types (a
"neutrophil" without segmented/band, an "immature_granulocyte") are trained on with the set of types
the label allows (:data:`GROUPS`, :func:`set_loss`) and scored at their own level (:func:`to_level`).

A classifier file is a dict of tensors and JSON values (``torch.load(weights_only=True)``: loading runs no
code), weights in 8 bits. Research use only.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.io import atomic_write
from .errors import SettingError
from .model import check_pixel_size

TYPES = ("segmented_neutrophil", "band_neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil",
         "promyelocyte", "myelocyte", "metamyelocyte", "erythroblast", "platelet")
UNIDENTIFIED = "unidentified"
#: labels that name a set of types: trained as "one of these", scored at that level
GROUPS = {"neutrophil": ("segmented_neutrophil", "band_neutrophil"),
          "immature_granulocyte": ("promyelocyte", "myelocyte", "metamyelocyte")}
FIVE_PART = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
TYPE_FORMAT = "hemaseg-celltypes"
TYPE_VERSION = 1
ARCHS = ("resnet18", "efficientnet_lite0")


def allowed_types(label: str, types: Sequence[str] = TYPES) -> tuple[str, ...]:
    """The types a label allows: itself, or its group's members.

    >>> allowed_types("neutrophil"), allowed_types("monocyte")
    (('segmented_neutrophil', 'band_neutrophil'), ('monocyte',))
    """
    members = GROUPS.get(label, (label,))
    if not set(members) <= set(types):
        raise SettingError(f"label '{label}' is not one of the types {', '.join(types)} nor a group of them "
                         f"({', '.join(GROUPS)})")
    return tuple(members)


def to_level(predicted: str, label: str) -> str:
    """A predicted type said at the level of a truth ``label``: a segmented neutrophil is a right answer
    where the truth only says "neutrophil".

    >>> to_level("band_neutrophil", "neutrophil"), to_level("band_neutrophil", "lymphocyte"), to_level("myelocyte", "myelocyte")
    ('neutrophil', 'band_neutrophil', 'myelocyte')
    """
    for group, members in GROUPS.items():
        if predicted in members and label == group:
            return group
    return predicted


@dataclass(frozen=True)
class TypeConfig:
    """The classifier and how a cell is shown to it. ``pixel_size``: um per pixel of the crops;
    ``context``: side of the stored window (px), of which the network sees the centre ``size``;
    ``stain``: "reinhard" (colours matched to ``reference``, Lab means and spreads) or "none";
    ``arch``: "efficientnet_lite0" or "resnet18" (:class:`TypeNet`); ``views``: the cell seen as it is (1) or also turned and mirrored (4 or 8 views), logits averaged;
    ``temperature``/``threshold``: calibration and the ``unidentified`` bin (set by training)."""

    types: tuple[str, ...] = TYPES
    pixel_size: float = 0.25
    context: int = 128
    size: int = 96
    stain: str = "reinhard"
    reference: tuple[float, ...] = (70.0, 12.0, 12.0, 8.0, -8.0, 8.0)  # L, a, b: mean and spread each
    arch: str = "efficientnet_lite0"
    views: int = 1
    temperature: float = 1.0
    threshold: float = 0.5

    def __post_init__(self):
        if self.stain not in ("reinhard", "none"):
            raise SettingError(f"stain must be 'reinhard' or 'none', not {self.stain!r}")
        if not 16 <= self.size <= self.context:
            raise SettingError(f"size {self.size} must be 16..context ({self.context})")
        if self.views not in (1, 4, 8):
            raise SettingError(f"views must be 1, 4 or 8, not {self.views}")
        if self.arch not in ARCHS:
            raise SettingError(f"unknown arch {self.arch!r} (known: {', '.join(ARCHS)})")
        if not self.pixel_size > 0 or len(self.reference) != 6 or not self.temperature > 0:
            raise SettingError("pixel_size and temperature must be > 0 and reference 6 numbers")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TypeConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


# ------------------------------------------------------------------------------------ crops
def context_crop(image: np.ndarray, center: tuple[float, float], pixel_size: float, cfg: TypeConfig = TypeConfig()) -> np.ndarray:
    """The ``cfg.context``-pixel square around ``center`` (``(y, x)``, image pixels) of ``image`` (``HWC``
    uint8 RGB, ``pixel_size`` um per px), resampled (antialiased) to ``cfg.pixel_size``; beyond the image
    edge the image is mirrored. Returns ``context x context x 3`` uint8.

    >>> im = np.zeros((40, 40, 3), np.uint8); im[10:30, 10:30] = 200
    >>> c = context_crop(im, (20, 20), 0.5, TypeConfig(pixel_size=1.0, context=16, size=16))
    >>> c.shape, int(c[8, 8, 0]), int(c[0, 0, 0])
    ((16, 16, 3), 200, 0)
    """
    from skimage.transform import resize

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"context_crop needs an HxWx3 uint8 image, not {image.shape} {image.dtype}")
    check_pixel_size(pixel_size)
    half = cfg.context * cfg.pixel_size / pixel_size / 2  # window half-side in image pixels
    y0, x0 = int(round(center[0] - half)), int(round(center[1] - half))
    side = max(1, int(round(2 * half)))
    h, w = image.shape[:2]
    pads = ((max(0, -y0), max(0, y0 + side - h)), (max(0, -x0), max(0, x0 + side - w)), (0, 0))
    window = image[max(0, y0): y0 + side, max(0, x0): x0 + side]
    if any(p for pair in pads[:2] for p in pair):
        window = np.pad(window, pads, mode="symmetric")
    out = resize(window, (cfg.context, cfg.context), order=1, anti_aliasing=side > cfg.context, preserve_range=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def context_crops(image: np.ndarray, centers: Sequence[tuple[float, float]], pixel_size: float,
                  cfg: TypeConfig = TypeConfig()) -> np.ndarray:
    """:func:`context_crop` of each of ``centers`` (``(y, x)``, image pixels) of ``image`` (``HWC`` uint8 RGB,
    ``pixel_size`` um per px), all at once: the image is mirror-padded and antialiased once, then every
    window is sampled bilinearly on the very grid :func:`context_crop` uses (one ``grid_sample`` call) -
    the same crops but within a grey level or two near a window's edge, where the antialiasing sees the
    image beyond it, a tenth of the time for the hundred red cells of a field.
    Returns ``N x context x context x 3`` uint8.

    >>> im = np.zeros((40, 40, 3), np.uint8); im[10:30, 10:30] = 200
    >>> cfg = TypeConfig(pixel_size=1.0, context=16, size=16)
    >>> c = context_crops(im, [(20, 20), (10, 1)], 0.5, cfg)
    >>> c.shape, int(c[0, 8, 8, 0]), int(c[0, 0, 0, 0])
    ((2, 16, 16, 3), 200, 0)
    >>> one = np.stack([context_crop(im, (20, 20), 0.5, cfg), context_crop(im, (10, 1), 0.5, cfg)])
    >>> int(np.abs(c.astype(int) - one)[:, 3:-3, 3:-3].max())
    0
    """
    from scipy import ndimage as ndi

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"context_crops needs an HxWx3 uint8 image, not {image.shape} {image.dtype}")
    check_pixel_size(pixel_size)
    n, c = len(centers), cfg.context
    if not n:
        return np.zeros((0, c, c, 3), np.uint8)
    half = c * cfg.pixel_size / pixel_size / 2  # window half-side in image pixels, as context_crop
    side = max(1, int(round(2 * half)))
    m = side + 2  # every window lies inside the mirrored margin
    x = np.pad(image, ((m, m), (m, m), (0, 0)), mode="symmetric").astype(np.float32)
    sigma = (side / c - 1) / 2  # scikit-image's antialiasing (context_crop's resize) when shrinking
    if int(4 * sigma + 0.5) > 0:  # (below, its kernel is one tap: nothing to do)
        x = ndi.gaussian_filter(x, (sigma, sigma, 0), mode="mirror")
    h, w = x.shape[:2]
    step = (torch.arange(c, dtype=torch.float64) + 0.5) * side / c - 0.5  # output pixel -> window pixel
    corner = torch.tensor([(round(y - half), round(v - half)) for y, v in centers], dtype=torch.float64) + m
    ys = (corner[:, :1] + step + 0.5) / h * 2 - 1  # N x c, grid_sample's [-1, 1] (align_corners=False)
    xs = (corner[:, 1:] + step + 0.5) / w * 2 - 1
    grid = torch.stack([xs[:, None, :].expand(n, c, c), ys[:, :, None].expand(n, c, c)], -1).float()
    src = torch.from_numpy(x).permute(2, 0, 1)[None].expand(n, 3, h, w)
    out = F.grid_sample(src, grid, mode="bilinear", align_corners=False)
    return np.clip(np.round(out.permute(0, 2, 3, 1).numpy()), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------- colours
_RGB2XYZ = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB ``N x 3 x H x W`` in [0, 1] -> CIE-Lab (D65), as skimage's ``rgb2lab``."""
    lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = torch.einsum("ij,njhw->nihw", _RGB2XYZ.to(x), lin) / _WHITE.to(x)[None, :, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE-Lab -> sRGB in [0, 1] (clipped), the inverse of :func:`rgb_to_lab`."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], 1)
    xyz = torch.where(f > 0.2068966, f ** 3, (f - 16 / 116) / 7.787) * _WHITE.to(lab)[None, :, None, None]
    lin = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB2XYZ).to(lab), xyz).clamp(0, 1)
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * lin).clamp(0, 1)


def lab_stats(x: torch.Tensor) -> torch.Tensor:
    """Per image of ``x`` (``N x 3 x H x W`` RGB in [0, 1]): Lab mean and spread, ``N x 6`` (L, a, b pairs)."""
    lab = rgb_to_lab(x).flatten(2)
    return torch.stack([lab.mean(2), lab.std(2)], 2).flatten(1)


def reinhard(x: torch.Tensor, reference: Sequence[float]) -> torch.Tensor:
    """``x`` (``N x 3 x H x W`` RGB in [0, 1]) with each image's Lab means and spreads moved to
    ``reference`` (L, a, b: mean and spread each): Reinhard colour transfer.

    >>> x = torch.rand(2, 3, 8, 8) * 0.5 + 0.25
    >>> ref = lab_stats(x[:1])[0].tolist()
    >>> bool((lab_stats(reinhard(x, ref))[1] - torch.tensor(ref)).abs().max() < 1.0)
    True
    """
    lab = rgb_to_lab(x)
    flat = lab.flatten(2)
    mean, std = flat.mean(2)[..., None, None], flat.std(2).clamp_min(1e-3)[..., None, None]
    ref = torch.as_tensor(reference, dtype=x.dtype).view(3, 2)
    lab = (lab - mean) / std * ref[:, 1].view(1, 3, 1, 1) + ref[:, 0].view(1, 3, 1, 1)
    return lab_to_rgb(lab)


# ------------------------------------------------------------------------------------ network

class TypeNet(nn.Module):
    """The type CNN: ``N x 3 x size x size`` RGB in [0, 1] -> logits ``N x len(types)``. ``cfg.arch``:
    torchvision's ResNet-18 or EfficientNet-Lite0 (:mod:`hemaseg.backbones`); ``pretrained``: the body
    starts from the ImageNet weights of an installed package (Lite0 only) instead of random weights."""

    def __init__(self, cfg: TypeConfig = TypeConfig(), pretrained: bool = False):
        super().__init__()
        self.cfg = cfg
        if cfg.arch == "efficientnet_lite0":
            from .backbones import lite0

            self.body = lite0(len(cfg.types), pretrained)
            mean, std = 0.0, 1.0  # the body scales its input itself
        else:
            from torchvision.models import resnet18

            if pretrained:
                raise SettingError("no offline ImageNet weights for resnet18; use arch efficientnet_lite0")
            self.body = resnet18(weights=None, num_classes=len(cfg.types))
            mean, std = 0.5, 0.25
        self.register_buffer("mean", torch.full((1, 3, 1, 1), mean))
        self.register_buffer("std", torch.full((1, 3, 1, 1), std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


def prepare(contexts: torch.Tensor, cfg: TypeConfig) -> torch.Tensor:
    """Context crops (``N x C x C x 3`` uint8, :func:`context_crop`) -> the network's input: stain matched
    (``cfg.stain``) over the whole window, then the centre ``cfg.size`` pixels, ``N x 3 x size x size``."""
    x = contexts.permute(0, 3, 1, 2).float() / 255
    if cfg.stain == "reinhard":
        x = reinhard(x, cfg.reference)
    o = (cfg.context - cfg.size) // 2
    return x[:, :, o: o + cfg.size, o: o + cfg.size]


# ------------------------------------------------------------------------------------ classifier
@dataclass
class TypeCall:
    """One cell's types: ``type`` (the call: best type, or ``unidentified`` under the threshold), its
    probability, and the two most probable types with theirs."""

    type: str
    confidence: float
    top: str
    second: str
    second_confidence: float


class CellTypeClassifier:
    """A trained :class:`TypeNet` with its config (calibration and threshold included)."""

    def __init__(self, net: TypeNet, report: dict | None = None):
        self.net = net.eval()
        self.cfg = net.cfg
        self.report = report or {}

    @property
    def classes(self) -> tuple[str, ...]:
        return self.cfg.types

    @torch.no_grad()
    def logits(self, contexts: np.ndarray | torch.Tensor, batch: int = 128) -> torch.Tensor:
        """Uncalibrated logits ``N x len(types)`` of context crops (``N x C x C x 3`` uint8), averaged over
        ``cfg.views`` views (quarter turns, then their mirror images)."""
        contexts = torch.as_tensor(np.asarray(contexts))
        out = []
        for i in range(0, len(contexts), batch):
            x = prepare(contexts[i: i + batch], self.cfg)
            views = [torch.rot90(v, k, (2, 3)) for v in (x, x.flip(3))[: 1 + (self.cfg.views == 8)]
                     for k in range(1 if self.cfg.views == 1 else 4)]
            out.append(torch.stack([self.net(v) for v in views]).mean(0))
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def probabilities(self, contexts: np.ndarray | torch.Tensor, batch: int = 128) -> np.ndarray:
        """Calibrated probabilities ``N x len(types)`` of context crops (``N x C x C x 3`` uint8)."""
        return torch.softmax(self.logits(contexts, batch) / self.cfg.temperature, 1).numpy()

    def calls(self, probs: np.ndarray) -> list[TypeCall]:
        """Probabilities -> :class:`TypeCall` per cell (``unidentified`` under ``cfg.threshold``)."""
        out = []
        for p in probs:
            a, b = np.argsort(-p)[:2]
            top = self.classes[a]
            out.append(TypeCall(top if p[a] >= self.cfg.threshold else UNIDENTIFIED, round(float(p[a]), 4), top,
                                self.classes[b], round(float(p[b]), 4)))
        return out

    def type_cells(self, image: np.ndarray, boxes: np.ndarray, pixel_size: float) -> list[TypeCall]:
        """The types of cells of ``image`` (``HWC`` uint8 RGB, ``pixel_size`` um per px) given their
        ``XYXY`` boxes (``N x 4``): each cell seen centred at its box centre."""
        if len(boxes) == 0:
            return []
        crops = np.stack([context_crop(image, ((b[1] + b[3]) / 2, (b[0] + b[2]) / 2), pixel_size, self.cfg) for b in boxes])
        return self.calls(self.probabilities(crops))

    def save(self, path: str | Path) -> Path:
        """Write ``{format, version, config, model (8-bit), report}`` atomically."""
        from .model import quantize_state

        kept, q, scales = quantize_state({k: v.detach().cpu() for k, v in self.net.state_dict().items()})
        payload = {"format": TYPE_FORMAT, "version": TYPE_VERSION, "config": self.cfg.to_dict(), "model": kept,
                   "model_int8": q, "model_int8_scale": scales, "report": _jsonable(self.report)}
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: str | Path) -> CellTypeClassifier:
        """A classifier from its file (``weights_only=True``: no code runs); errors name the file."""
        from .model import CheckpointError, dequantize_state, load_marked

        p = Path(path)
        ckpt = load_marked(p, TYPE_FORMAT, "cell-type classifier")
        if ckpt.get("version") != TYPE_VERSION:
            raise CheckpointError(f"{p}: cell-type classifier version {ckpt.get('version')} is not supported (expected {TYPE_VERSION})")
        try:
            net = TypeNet(TypeConfig.from_dict(ckpt["config"]))
            net.load_state_dict(dequantize_state(ckpt["model"], ckpt.get("model_int8", {}), ckpt.get("model_int8_scale", {})))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{p}: bad cell-type classifier ({str(err)[:300]})") from err
        return cls(net, ckpt.get("report") or {})


def bundled_types() -> CellTypeClassifier | None:
    """The classifier shipped with the package (``models/celltypes.pt``, see models/MODEL_CARD.md), or None
    if this installation has none."""
    from .model import BUNDLED_CLASSIFIER

    return CellTypeClassifier.load(BUNDLED_CLASSIFIER) if BUNDLED_CLASSIFIER.is_file() else None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


# ------------------------------------------------------------------------------------ training data
@dataclass
class CropSet:
    """Labelled cells as context crops: ``crops`` ``N x C x C x 3`` uint8, per cell its ``labels`` (a type
    or a group, :data:`GROUPS`), ``sources`` (a dataset name) and ``names`` (image and cell)."""

    crops: np.ndarray
    labels: list[str]
    sources: list[str]
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: Sequence[int]) -> CropSet:
        index = list(index)
        return CropSet(self.crops[index], [self.labels[i] for i in index], [self.sources[i] for i in index],
                       [self.names[i] for i in index] if self.names else [])

    @staticmethod
    def join(parts: Sequence[CropSet]) -> CropSet:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise SettingError("no labelled cells")
        return CropSet(np.concatenate([p.crops for p in parts]), [x for p in parts for x in p.labels],
                       [x for p in parts for x in p.sources], [x for p in parts for x in p.names])


def cell_centres(mask: np.ndarray, min_fraction: float = 0.2) -> list[tuple[float, float]]:
    """Centres ``(y, x)`` of the cells of a mask (any nonzero pixel; connected parts), largest first,
    leaving out parts under ``min_fraction`` of the largest (stray specks).

    >>> m = np.zeros((20, 30), np.uint8); m[2:8, 2:8] = 255; m[10:18, 20:28] = 128; m[0, 29] = 1
    >>> cell_centres(m)
    [(13.5, 23.5), (4.5, 4.5)]
    """
    from skimage.measure import label, regionprops

    parts = sorted(regionprops(label(np.asarray(mask) != 0)), key=lambda r: -r.area)
    if not parts:
        return []
    return [(float(r.centroid[0]), float(r.centroid[1])) for r in parts if r.area >= min_fraction * parts[0].area]


def labelled_crops(files: Sequence[Path], labels: dict[str, str], pixel_size: float | Callable[[np.ndarray], float],
                   source: str, cfg: TypeConfig = TypeConfig(), progress: bool = False) -> CropSet:
    """The labelled cells of ``files``: one type per image (``labels``, image stem -> type or group, as
    :func:`hemaseg.classify.read_type_labels` reads them; images without one, or with several types
    ``a|b``, are left out). The cells of an image are the parts of its mask ``NAME.png`` beside it (0 =
    background) when there is one, else the cell the image is centred on (CellaVision-style crops).
    ``pixel_size``: um per px of the images, or a function of the image giving it (a scale estimate)."""
    from tqdm import tqdm

    from .classify import type_of
    from .data.contract import image_to_rgb8
    from .data.io import DataError, read_image

    crops, out_labels, names = [], [], []
    for path in tqdm(list(files), desc=f"crops {source}", disable=not progress):
        t = type_of(labels, Path(path).stem)
        if not t or "|" in t:
            continue
        allowed_types(t, cfg.types)
        image = image_to_rgb8(read_image(path))
        mask_path = Path(path).with_suffix(".png")
        if mask_path.is_file() and mask_path != Path(path):
            mask = read_image(mask_path)
            if mask.shape[:2] != image.shape[:2]:
                raise DataError(f"{mask_path}: mask {mask.shape[:2]} does not match its image {image.shape[:2]}")
            centres = cell_centres(mask if mask.ndim == 2 else mask[..., 0])
        else:
            centres = [((image.shape[0] - 1) / 2, (image.shape[1] - 1) / 2)]
        px = pixel_size(image) if callable(pixel_size) else pixel_size
        for k, c in enumerate(centres):
            crops.append(context_crop(image, c, px, cfg))
            out_labels.append(t)
            names.append(f"{Path(path).name}#{k + 1}")
    empty = np.zeros((0, cfg.context, cfg.context, 3), np.uint8)
    return CropSet(np.stack(crops) if crops else empty, out_labels, [source] * len(out_labels), names)


def split_crops(data: CropSet, fraction: float, seed: int) -> tuple[CropSet, CropSet]:
    """Hold out ``fraction`` of each source's images (all cells of an image on one side), seeded."""
    rng = np.random.default_rng(seed)
    images = sorted({(s, n.split("#")[0]) for s, n in zip(data.sources, data.names or map(str, range(len(data))))})
    rng.shuffle(images)
    by_source: dict[str, list] = {}
    for s, im in images:
        by_source.setdefault(s, []).append(im)
    held = {(s, im) for s, ims in by_source.items() for im in ims[: int(round(fraction * len(ims)))]}
    keys = [(s, n.split("#")[0]) for s, n in zip(data.sources, data.names or map(str, range(len(data))))]
    return data.take([i for i, k in enumerate(keys) if k not in held]), data.take([i for i, k in enumerate(keys) if k in held])


# ------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class TypeTrainConfig:
    """``epochs`` of ``len(training cells)`` draws each, weighted so that every source counts by the
    square root of its size and, within a source, every label by the square root of its count
    (:func:`draw_weights`); AdamW with a cosine schedule; ``calibration``: share of each source's images
    kept aside for the temperature and the threshold; ``target_accuracy``: accuracy wanted of the cells
    that are typed (the rest unidentified), read off the calibration cells' coverage/accuracy curve;
    ``pretrained``: start from ImageNet weights (arch efficientnet_lite0; resnet18 has none offline)."""

    epochs: int = 12
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    calibration: float = 0.1
    target_accuracy: float = 0.95
    max_unidentified: float = 0.25
    pretrained: bool = True
    seed: int = 0


def draw_weights(labels: Sequence[str], sources: Sequence[str]) -> np.ndarray:
    """Sampling weight of each cell (sums to 1): sources by sqrt(size), labels within a source by
    1/sqrt(count) - rare types are seen more, without one image repeated a thousand times.

    >>> w = draw_weights(["a", "a", "a", "a", "b"], ["s"] * 5)
    >>> round(float(w[4] / w[0]), 3)
    2.0
    """
    labels, sources = list(labels), list(sources)
    n_source = {s: sources.count(s) for s in set(sources)}
    n_label = {(s, t): 0 for s, t in zip(sources, labels)}
    for key in zip(sources, labels):
        n_label[key] += 1
    raw = np.array([1 / math.sqrt(n_label[(s, t)]) for s, t in zip(sources, labels)])
    w = np.zeros(len(labels))
    for s in n_source:
        idx = [i for i, x in enumerate(sources) if x == s]
        w[idx] = math.sqrt(n_source[s]) * raw[idx] / raw[idx].sum()
    return w / w.sum()


def allowed_matrix(labels: Sequence[str], types: Sequence[str]) -> torch.Tensor:
    """``N x len(types)`` bool: the types each label allows."""
    index = {t: i for i, t in enumerate(types)}
    out = torch.zeros(len(labels), len(types), dtype=torch.bool)
    for i, lab in enumerate(labels):
        out[i, [index[t] for t in allowed_types(lab, types)]] = True
    return out


def set_loss(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log P(the type is one the label allows)``: cross-entropy for a label of one type, the
    group's summed probability for a group label ("neutrophil": segmented or band).

    >>> logits = torch.zeros(1, 3)  # three types equally likely; the label allows two of them
    >>> round(float(set_loss(logits, torch.tensor([[True, True, False]]))), 4)  # -log(2/3)
    0.4055
    """
    logp = torch.log_softmax(logits, 1)
    return -torch.logsumexp(logp.masked_fill(~allowed, float("-inf")), 1).mean()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(x)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


def augment(contexts: torch.Tensor, cfg: TypeConfig, g: torch.Generator) -> torch.Tensor:
    """Training views of context crops (``N x C x C x 3`` uint8) -> ``N x 3 x size x size``: stain and colour
    jitter before the stain matching (another lab's stain), then any rotation, mirror, 0.85-1.18x zoom (a
    scale estimate's error) and a shift of up to 10% of the view (an outline's centre), blur, noise."""
    n = len(contexts)
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    x = contexts.permute(0, 3, 1, 2).float() / 255
    gamma = torch.exp((u(n, 3, 1, 1) - 0.5) * 0.5)  # per-channel gamma 0.78-1.28: stain hue and depth
    x = x.clamp_min(1e-4) ** gamma
    grey = x.mean(1, keepdim=True)
    x = (grey + (x - grey) * (0.6 + 0.8 * u(n, 1, 1, 1))).clamp(0, 1)  # saturation 0.6-1.4
    x = (x * (0.8 + 0.4 * u(n, 1, 1, 1))).clamp(0, 1)  # exposure
    if cfg.stain == "reinhard":
        x = reinhard(x, cfg.reference)
    angle = u(n) * 2 * math.pi
    zoom = torch.exp((u(n) - 0.5) * 2 * math.log(1.18)) * cfg.size / cfg.context
    flip = torch.where(u(n) < 0.5, -1.0, 1.0)
    shift = (u(n, 2) - 0.5) * 0.2 * cfg.size / cfg.context
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [n, 3, cfg.size, cfg.size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if u(1).item() < 0.3:
        x = _blur(x, 0.4 + 1.2 * u(1).item())
    x = x + torch.randn(x.shape, generator=g) * 0.02 * u(n, 1, 1, 1)
    x = (x - 0.5) * (0.85 + 0.3 * u(n, 1, 1, 1)) + 0.5 + (u(n, 1, 1, 1) - 0.5) * 0.1  # contrast, brightness
    return x.clamp(0, 1)


def reference_stats(crops: np.ndarray, limit: int = 2000, seed: int = 0) -> tuple[float, ...]:
    """The reference stain: the median Lab means and spreads of up to ``limit`` crops."""
    idx = np.random.default_rng(seed).permutation(len(crops))[:limit]
    stats = torch.cat([lab_stats(torch.as_tensor(crops[idx[i: i + 256]]).permute(0, 3, 1, 2).float() / 255)
                       for i in range(0, len(idx), 256)])
    return tuple(round(float(v), 3) for v in stats.median(0).values)


def fit_temperature(logits: torch.Tensor, allowed: torch.Tensor) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)`` (group
    labels: their summed probability), searched on a log grid 0.25-8.

    >>> logits = torch.tensor([[4.0, 0.0]] * 8 + [[0.0, 4.0]] * 2); allowed = torch.tensor([[True, False]] * 10)
    >>> fit_temperature(logits, allowed)  # sure at odds e^4 = 55 but right 8 times in 10: 4 / T = log 4, T = 2.885
    2.9113
    """
    grid = torch.exp(torch.linspace(math.log(0.25), math.log(8), 121))
    nll = torch.stack([set_loss(logits / t, allowed) for t in grid])
    return round(float(grid[int(nll.argmin())]), 4)


def coverage_curve(confidence: np.ndarray, correct: np.ndarray, steps: int = 101) -> list[dict]:
    """Per threshold ``t`` in 0..1: the share of cells typed (best probability >= t) and their accuracy."""
    out = []
    for t in np.linspace(0, 1, steps):
        keep = confidence >= t
        out.append({"threshold": round(float(t), 3), "coverage": float(keep.mean()) if len(keep) else 0.0,
                    "accuracy": float(correct[keep].mean()) if keep.any() else float("nan")})
    return out


def choose_threshold(curve: list[dict], target: float, max_unidentified: float) -> float:
    """The lowest threshold whose typed cells reach ``target`` accuracy, but never one that leaves more
    than ``max_unidentified`` of the cells unidentified.

    >>> curve = [{"threshold": 0.0, "coverage": 1.0, "accuracy": 0.9}, {"threshold": 0.5, "coverage": 0.9, "accuracy": 0.96},
    ...          {"threshold": 0.9, "coverage": 0.5, "accuracy": 0.99}]
    >>> choose_threshold(curve, 0.95, 0.25), choose_threshold(curve, 0.99, 0.25)
    (0.5, 0.5)
    """
    allowed = [c for c in curve if c["coverage"] >= 1 - max_unidentified] or curve[:1]
    for c in allowed:
        if c["accuracy"] >= target:
            return c["threshold"]
    return allowed[-1]["threshold"]


def type_scores(truth: Sequence[str], predicted: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy (mean recall over the truth's labels), per-label precision and recall
    and the confusion counts of predictions said at each truth's level (:func:`to_level`).

    >>> s = type_scores(["neutrophil", "lymphocyte", "lymphocyte"], ["band_neutrophil", "lymphocyte", "monocyte"])
    >>> s["accuracy"], s["balanced_accuracy"], s["per_type"]["lymphocyte"]
    (0.667, 0.75, {'n': 2, 'precision': 1.0, 'recall': 0.5})
    """
    said = [to_level(p, t) for p, t in zip(predicted, truth)]
    labels = sorted(set(truth), key=lambda t: (FIVE_PART + TYPES + tuple(GROUPS)).index(t) if t in FIVE_PART + TYPES + tuple(GROUPS) else 99)
    per = {}
    for lab in labels:
        tp = sum(t == lab and s == lab for t, s in zip(truth, said))
        n_pred = sum(s == lab for s in said)
        n = sum(t == lab for t in truth)
        per[lab] = {"n": n, "precision": round(tp / n_pred, 3) if n_pred else float("nan"), "recall": round(tp / n, 3)}
    confusion: dict[str, dict[str, int]] = {}
    for t, s in zip(truth, said):
        confusion.setdefault(t, {}).setdefault(s, 0)
        confusion[t][s] += 1
    acc = sum(t == s for t, s in zip(truth, said)) / len(truth) if truth else float("nan")
    return {"cells": len(truth), "accuracy": round(acc, 3),
            "balanced_accuracy": round(float(np.mean([per[lab]["recall"] for lab in labels])), 3) if labels else float("nan"),
            "per_type": per, "confusion": confusion}


def fit_celltypes(train: CropSet, cfg: TypeConfig = TypeConfig(), tcfg: TypeTrainConfig = TypeTrainConfig(),
                  log: Callable[[str], None] = print, progress: bool = True) -> CellTypeClassifier:
    """Train a classifier on ``train`` (its ``tcfg.calibration`` share of each source's images kept for
    the temperature and the threshold). Its ``report``: epochs' losses, the calibration cells' scores,
    temperature, coverage/accuracy curve and the threshold chosen, training minutes."""
    from tqdm import tqdm

    for lab in set(train.labels):
        allowed_types(lab, cfg.types)
    fit, cal = split_crops(train, tcfg.calibration, tcfg.seed)
    if not len(fit) or not len(cal):
        raise SettingError(f"too few labelled images to train and calibrate ({len(train)} cells)")
    if cfg.stain == "reinhard":
        cfg = dataclasses.replace(cfg, reference=reference_stats(fit.crops, seed=tcfg.seed))
    torch.manual_seed(tcfg.seed)
    g = torch.Generator().manual_seed(tcfg.seed)
    net = TypeNet(cfg, tcfg.pretrained)
    weights = torch.as_tensor(draw_weights(fit.labels, fit.sources))
    allowed = allowed_matrix(fit.labels, cfg.types)
    crops = torch.as_tensor(fit.crops)
    steps_per_epoch = max(1, len(fit) // tcfg.batch)
    opt = torch.optim.AdamW(net.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, tcfg.lr, total_steps=tcfg.epochs * steps_per_epoch, pct_start=0.1)
    t0, losses = time.time(), []
    log(f"training on {len(fit)} cells ({', '.join(f'{s} {fit.sources.count(s)}' for s in sorted(set(fit.sources)))}), "
        f"calibrating on {len(cal)}; {tcfg.epochs} epochs of {steps_per_epoch} steps")
    for epoch in range(tcfg.epochs):
        net.train()
        total = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{tcfg.epochs}", disable=not progress, leave=False)
        for _ in bar:
            idx = torch.multinomial(weights, tcfg.batch, replacement=True, generator=g)
            loss = set_loss(net(augment(crops[idx], cfg, g)), allowed[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        losses.append(round(total / steps_per_epoch, 4))
        log(f"epoch {epoch + 1}/{tcfg.epochs}: loss {losses[-1]:.4f} ({(time.time() - t0) / 60:.1f} min)")
    clf = calibrate(CellTypeClassifier(net), cal, tcfg)
    clf.report.update(train_cells=len(fit), losses=losses, minutes=round((time.time() - t0) / 60, 2),
                      train_config=dataclasses.asdict(tcfg))
    log(f"temperature {clf.cfg.temperature}, unidentified under {clf.cfg.threshold}; calibration cells: "
        + ", ".join(f"{s} {r['accuracy']:.3f}" for s, r in clf.report["calibration"].items()))
    return clf


def calibrate(clf: CellTypeClassifier, cal: CropSet, tcfg: TypeTrainConfig = TypeTrainConfig()) -> CellTypeClassifier:
    """Set ``clf``'s temperature (:func:`fit_temperature`) and unidentified threshold
    (:func:`choose_threshold`) on the calibration cells ``cal``, which training never saw; their scores,
    reliability table and coverage/accuracy curve go to ``clf.report``."""
    logits = clf.logits(cal.crops)
    cfg = clf.cfg
    cal_allowed = allowed_matrix(cal.labels, cfg.types)
    temperature = fit_temperature(logits, cal_allowed)
    probs = torch.softmax(logits / temperature, 1).numpy()
    top = probs.argmax(1)
    correct = cal_allowed[torch.arange(len(cal)), torch.as_tensor(top)].numpy()
    curve = coverage_curve(probs.max(1), correct)
    threshold = choose_threshold(curve, tcfg.target_accuracy, tcfg.max_unidentified)
    clf.cfg = clf.net.cfg = dataclasses.replace(cfg, temperature=temperature, threshold=threshold)
    predicted = [cfg.types[i] for i in top]
    clf.report.update({"calibration_cells": len(cal), "temperature": temperature, "threshold": threshold,
                       "calibration": {s: type_scores([lab for lab, x in zip(cal.labels, cal.sources) if x == s],
                                                      [p for p, x in zip(predicted, cal.sources) if x == s])
                                       for s in sorted(set(cal.sources))},
                       "reliability": reliability(probs.max(1), correct), "coverage_curve": curve[::5]})
    return clf


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict:
    """Reliability table (per confidence bin: cells, mean confidence, accuracy) and the expected
    calibration error (ECE: their gap, weighted by cells).

    >>> r = reliability(np.array([0.95, 0.95, 0.55, 0.55]), np.array([1, 1, 1, 0]))
    >>> r["ece"], [b["accuracy"] for b in r["bins"]]
    (0.05, [0.5, 1.0])
    """
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (confidence >= lo) & ((confidence < hi) if hi < 1 else (confidence <= hi))
        if m.any():
            conf, acc = float(confidence[m].mean()), float(np.mean(correct[m]))
            rows.append({"from": round(float(lo), 2), "to": round(float(hi), 2), "cells": int(m.sum()),
                         "confidence": round(conf, 3), "accuracy": round(acc, 3)})
            ece += m.sum() / len(confidence) * abs(conf - acc)
    return {"bins": rows, "ece": round(float(ece), 4)}


# ------------------------------------------------------------------------------------ folders
@dataclass(frozen=True)
class TypeSource:
    """A folder of labelled cell images (:func:`labelled_crops`): its ``labels`` CSV (``image,type``), its
    ``pixel_size`` (um per px; None: each image's scale estimate) and the share of its images held out
    (``holdout``, seeded as :func:`hemaseg.scale.split_images`: the same images a segmentation run with
    that seed holds out)."""

    folder: Path
    labels: Path
    pixel_size: float | None = None
    holdout: float = 0.2

    def __post_init__(self):
        check_pixel_size(self.pixel_size, f"{self.folder}: pixel size")
        if not 0 <= self.holdout < 1:
            raise SettingError(f"{self.folder}: holdout must be 0 or more and under 1, got {self.holdout}")

    @property
    def name(self) -> str:
        return Path(self.folder).name


def source_crops(src: TypeSource, cfg: TypeConfig = TypeConfig(), seed: int = 0,
                 progress: bool = False) -> tuple[CropSet, CropSet]:
    """The training and held-out cells of a :class:`TypeSource`."""
    from .classify import read_type_labels
    from .data.formats import list_images
    from .data.io import DataError
    from .scale import split_images

    files = list_images([src.folder])
    if not files:
        raise DataError(f"{src.folder}: no images")
    labels = read_type_labels(src.labels)
    train, held = split_images(files, src.holdout, seed) if src.holdout > 0 else (files, [])
    if src.pixel_size is not None:
        px: float | Callable = src.pixel_size
    else:
        from .scale import bundled_scale_net, estimate_scale

        net = bundled_scale_net()
        if net is None:
            raise DataError(f"{src.folder}: give its pixel size (no scale model to estimate it)")

        def px(image):
            est = estimate_scale(net, image)
            if not est.confident:
                raise DataError(f"{src.folder}: an image's scale could not be estimated ({est.describe()}): give --pixel-size")
            return est.pixel_size

    parts = [labelled_crops(f, labels, px, src.name, cfg, progress) for f in (train, held)]
    if not len(parts[0]):
        raise DataError(f"{src.labels}: no labelled image of {src.folder} (image names must match the CSV's)")
    return parts[0], parts[1]


def fit_sources(sources: Sequence[TypeSource], cfg: TypeConfig = TypeConfig(), tcfg: TypeTrainConfig = TypeTrainConfig(),
                log: Callable[[str], None] = print, progress: bool = True) -> CellTypeClassifier:
    """What ``hemaseg fit-classifier`` does: each source's training and held-out cells
    (:func:`source_crops`, seeded by ``tcfg.seed``), one classifier trained on all training cells
    (:func:`fit_celltypes`), then each source's held-out cells scored (:func:`type_scores`) into
    ``report["held_out"]`` (folder -> scores)."""
    if tcfg.pretrained and cfg.arch != "efficientnet_lite0":
        raise SettingError(f"no offline ImageNet weights for {cfg.arch}: train it from random weights")
    parts = [source_crops(s, cfg, tcfg.seed, progress) for s in sources]
    for s, (train, held) in zip(sources, parts):
        log(f"{s.folder}: {len(train)} training cells, {len(held)} held out")
    clf = fit_celltypes(CropSet.join([p[0] for p in parts]), cfg, tcfg, log=log, progress=progress)
    held_out = {}
    for s, (_, held) in zip(sources, parts):
        if len(held):
            probs = clf.probabilities(held.crops)
            held_out[str(s.folder)] = type_scores(held.labels, [clf.classes[i] for i in probs.argmax(1)])
    clf.report["held_out"] = held_out
    return clf
