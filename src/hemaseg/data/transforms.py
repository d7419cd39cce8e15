"""Joint transforms: each takes and returns a contract ``(image, target)`` pair.

Geometric transforms move the image, the cell masks and the nucleus masks together and then
*derive* the boxes from the moved masks (:func:`.contract.drop_empty`), so a box can never drift off
its mask (the original recipe scaled boxes by ``224 / width`` while ``Resize(224)`` scaled the short
side). Colour transforms touch the image only. Randomness comes from ``torch``'s global generator,
which the training loop seeds per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from skimage.color import hed_from_rgb, rgb_from_hed
from torchvision.transforms.v2 import functional as TF

from ..errors import SettingError
from .contract import Target, drop_empty

MASK_KEYS = ("masks", "nuclei")


def _rand() -> float:
    return float(torch.rand(()))


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * _rand()


def _apply_geometric(image: torch.Tensor, target: Target, fn) -> tuple[torch.Tensor, Target]:
    """Apply ``fn`` (CHW or NHW tensor -> same) to the image and every mask stack, re-derive boxes."""
    out = dict(target)
    for key in MASK_KEYS:
        if key in out:
            out[key] = fn(out[key])
    return fn(image), drop_empty(out)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class RandomFlip:
    """Flip left-right and/or up-down, each with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, target):
        if _rand() < self.p:
            image, target = _apply_geometric(image, target, lambda t: t.flip(-1))
        if _rand() < self.p:
            image, target = _apply_geometric(image, target, lambda t: t.flip(-2))
        return image, target


class RandomRot90:
    """Rotate by 0, 90, 180 or 270 degrees, equally likely."""

    def __call__(self, image, target):
        k = int(torch.randint(0, 4, ()))
        if k == 0:
            return image, target
        return _apply_geometric(image, target, lambda t: torch.rot90(t, k, dims=(-2, -1)))


def resize_pair(image: torch.Tensor, target: Target, height: int, width: int) -> tuple[torch.Tensor, Target]:
    """Resize image (bilinear, antialiased) and masks (nearest) to ``height x width``; boxes follow."""
    if (height, width) == tuple(image.shape[1:]):
        return image, target
    img = TF.resize(image, [height, width], antialias=True).clamp_(0, 1)
    out = dict(target)
    for key in MASK_KEYS:
        if key in out:
            m = out[key]
            if m.shape[0] == 0:
                out[key] = m.new_zeros((0, height, width))
            else:
                # "nearest-exact" samples pixel centres, aligned with the bilinear image resize
                out[key] = F.interpolate(m[None].float(), size=(height, width), mode="nearest-exact")[0].to(m.dtype)
    return img, drop_empty(out)


class ResizeShortSide:
    """Resize so the short side is ``size`` px, keeping the aspect ratio (what ``Resize(224)`` does)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, target):
        h, w = image.shape[1:]
        s = self.size / min(h, w)
        return resize_pair(image, target, max(1, round(h * s)), max(1, round(w * s)))


class RandomScale:
    """Zoom by a factor drawn log-uniformly from ``[lo, hi]`` (cells get bigger or smaller)."""

    def __init__(self, lo: float = 0.8, hi: float = 1.25):
        if not 0 < lo <= hi:
            raise SettingError(f"need 0 < lo <= hi, got {lo}, {hi}")
        self.lo, self.hi = lo, hi

    def __call__(self, image, target):
        s = math.exp(_uniform(math.log(self.lo), math.log(self.hi)))
        h, w = image.shape[1:]
        return resize_pair(image, target, max(1, round(h * s)), max(1, round(w * s)))


class ColorJitter:
    """Brightness, contrast and saturation factors in ``1 +- strength``, hue shift in ``+- hue``."""

    def __init__(self, strength: float = 0.2, hue: float = 0.03):
        self.strength, self.hue = strength, hue

    def __call__(self, image, target):
        s = self.strength
        image = TF.adjust_brightness(image, _uniform(1 - s, 1 + s))
        image = TF.adjust_contrast(image, _uniform(1 - s, 1 + s))
        image = TF.adjust_saturation(image, _uniform(1 - s, 1 + s))
        if self.hue:
            image = TF.adjust_hue(image, _uniform(-self.hue, self.hue))
        return image.clamp_(0, 1), target


class StainJitter:
    """Perturb haematoxylin/eosin/DAB stain amounts by colour deconvolution (Ruifrok & Johnston, the
    matrices of ``skimage.color``): each stain density ``c`` becomes ``c * a + b`` with ``a ~ 1 +- sigma``
    and ``b ~ +- bias``. Done in optical density without clipping, so ``sigma = bias = 0`` is the identity."""

    _to_hed = torch.from_numpy(hed_from_rgb).float()
    _to_rgb = torch.from_numpy(rgb_from_hed).float()

    def __init__(self, sigma: float = 0.05, bias: float = 0.02):
        self.sigma, self.bias = sigma, bias

    def __call__(self, image, target):
        a = 1 + (torch.rand(3) * 2 - 1) * self.sigma
        b = (torch.rand(3) * 2 - 1) * self.bias
        od = -torch.log(image.clamp(min=1e-4)).permute(1, 2, 0)  # HWC optical density
        stains = (od @ self._to_hed) * a + b
        out = torch.exp(-(stains @ self._to_rgb)).permute(2, 0, 1)
        return out.clamp_(0, 1).contiguous(), target


@dataclass(frozen=True)
class AugmentConfig:
    """What the training pipeline augments. ``scale=(1, 1)`` and strengths of 0 turn a step off.

    ``fields`` is the share of training samples turned into whole smear fields (:mod:`.fields`) before
    the other steps, for datasets that annotate white cells only (the training loop skips the others);
    each cell keeps ``field_rim`` px of its own crop around it, fading into the painted field.
    """

    flip: bool = True
    rot90: bool = True
    scale: tuple[float, float] = (0.8, 1.25)
    color: float = 0.15
    hue: float = 0.02
    stain: float = 0.05
    fields: float = 0.0
    field_rim: int = 3  # px (at the training scale) of its own crop kept around each pasted cell

    def __post_init__(self):
        if not 0 <= self.fields <= 1:
            raise SettingError(f"fields must be a share in [0, 1], got {self.fields}")
        if self.field_rim < 1:
            raise SettingError(f"field_rim must be >= 1 px, got {self.field_rim}")


def build_train_transforms(cfg: AugmentConfig) -> Compose:
    """The training augmentation pipeline described by ``cfg``."""
    steps: list = []
    if cfg.flip:
        steps.append(RandomFlip())
    if cfg.rot90:
        steps.append(RandomRot90())
    if tuple(cfg.scale) != (1.0, 1.0):
        steps.append(RandomScale(*cfg.scale))
    if cfg.stain > 0:
        steps.append(StainJitter(cfg.stain, cfg.stain / 2))
    if cfg.color > 0 or cfg.hue > 0:
        steps.append(ColorJitter(cfg.color, cfg.hue))
    return Compose(steps)
