"""The semantic U-Net baseline: foreground vs background, cells = connected components.

It speaks torchvision's detection interface (``model(images, targets)`` -> loss dict in training,
``model(images)`` -> per-image ``boxes/labels/scores/masks`` in eval), so the same training loop, run
folder, checkpoints and evaluation serve it: ``hemaseg train --arch unet``. It shows with numbers what
instance segmentation adds: two touching cells share one connected component.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import nn

from .data.contract import masks_to_boxes

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def _norm(kind: str, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if kind == "batch" else nn.GroupNorm(max(1, c // 4), c)


def _block(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True))


def foreground_loss(logits: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy and soft Dice loss of foreground ``logits`` against ``truth`` (0/1), over the
    pixels where ``valid`` is 1 (all ``Float[B, H, W]``).

    >>> t = torch.zeros(1, 2, 2); t[0, 0] = 1
    >>> [round(float(v), 3) for v in foreground_loss(20 * (2 * t - 1), t, torch.ones_like(t))]
    [0.0, 0.0]
    """
    bce = (F.binary_cross_entropy_with_logits(logits, truth, reduction="none") * valid).sum() / valid.sum()
    prob = torch.sigmoid(logits) * valid
    dice = 1 - (2 * (prob * truth).sum() + 1) / (prob.sum() + truth.sum() + 1)
    return bce, dice


class UNet(nn.Module):
    """A 4-level U-Net (Ronneberger et al. 2015); ``width`` channels at full resolution. ``norm``: "batch"
    (BatchNorm) or "group" (GroupNorm of 4 channels a group: each image normalised on its own, the same
    in training and inference whatever else is in the batch)."""

    def __init__(self, width: int = 16, levels: int = 4, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")
        chans = [width * 2**i for i in range(levels)]
        self.down = nn.ModuleList([_block(3 if i == 0 else chans[i - 1], c, norm) for i, c in enumerate(chans)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(chans[i], chans[i - 1], 2, stride=2) for i in range(levels - 1, 0, -1)])
        self.merge = nn.ModuleList([_block(chans[i - 1] * 2, chans[i - 1], norm) for i in range(levels - 1, 0, -1)])
        self.head = nn.Conv2d(chans[0], 1, 1)
        self.multiple = 2 ** (levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class UNetSegmenter(nn.Module):
    """Detection-style wrapper: pads and normalises a list of images, trains on the union of the cell
    masks (BCE + Dice), predicts connected components of ``probability >= 0.5``."""

    def __init__(self, width: int = 16, min_area: int = 10):
        super().__init__()
        self.net = UNet(width)
        self.min_area = min_area
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(3, 1, 1), persistent=False)

    def _batch(self, images: list[torch.Tensor]) -> torch.Tensor:
        k = self.net.multiple
        h = max(im.shape[1] for im in images)
        w = max(im.shape[2] for im in images)
        H, W = -(-h // k) * k, -(-w // k) * k
        return torch.stack([F.pad((im - self.mean) / self.std, (0, W - im.shape[2], 0, H - im.shape[1])) for im in images])

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        logits = self.net(self._batch(images))[:, 0]
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training mode")
            truth = torch.zeros_like(logits)
            valid = torch.zeros_like(logits)
            for i, (im, t) in enumerate(zip(images, targets)):
                h, w = im.shape[1:]
                valid[i, :h, :w] = 1
                if len(t["masks"]):
                    truth[i, :h, :w] = t["masks"].amax(dim=0).float()
            bce, dice = foreground_loss(logits, truth, valid)
            return {"loss_bce": bce, "loss_dice": dice}
        return [self._instances(torch.sigmoid(logits[i, : im.shape[1], : im.shape[2]])) for i, im in enumerate(images)]

    def _instances(self, prob: torch.Tensor) -> dict:
        comps, n = ndi.label((prob >= 0.5).cpu().numpy())
        masks = torch.from_numpy(comps)[None] == torch.arange(1, n + 1)[:, None, None]
        masks = masks[masks.flatten(1).sum(1) >= self.min_area]
        p = prob.cpu()
        scores = torch.stack([p[m].mean() for m in masks]) if len(masks) else torch.zeros(0)
        return {"boxes": masks_to_boxes(masks), "labels": torch.ones(len(masks), dtype=torch.int64), "scores": scores,
                "masks": (masks.float() * p)[:, None]}
