"""Full-resolution outlines for Mask R-CNN's cells.

Mask R-CNN finds and separates the cells well, but draws each outline from a small grid (28x28 or 56x56)
of stride-4 features, stretched over the cell's predicted box: an outline off by a pixel or two all
around, and a box that is off moves it too. A U-Net at full resolution outlines better but cannot
separate touching cells (docs/benchmarks.md, issue 3). Here both work together, as one model:

* :class:`OutlineHead` - a small U-Net (:class:`hemaseg.unet.UNet`, GroupNorm) over the very images the
  Mask R-CNN sees (resized, normalised), trained with it on the union of the cells' masks (not the
  nuclei): foreground vs background, one more loss of the same training step.
* :func:`refine_outlines` - each cell keeps the foreground pixels within ``radius`` px of its Mask R-CNN
  mask, the nearest cell taking a pixel two could claim: the foreground redraws the outline, Mask R-CNN
  still says which cell a pixel belongs to, and where the foreground does not agree with a cell (missing,
  or much larger or smaller) the cell keeps its own mask.

A model with an outline head (``ModelConfig.outline`` > 0) is a :class:`MaskRCNNWithOutline`;
:func:`hemaseg.predict.predict_cells` applies the refinement.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import nn
from torchvision.models.detection import MaskRCNN

from .cells import Cells, mask_extent
from .unet import UNet, foreground_loss

OUTLINE_RADIUS = 5.0  # model px: how far the foreground may move a Mask R-CNN outline (measured: docs/benchmarks.md)
AREA_RANGE = (0.6, 1.4)  # a redrawn cell outside this share of its Mask R-CNN area keeps its own mask


class OutlineHead(nn.Module):
    """Foreground logits of each image of a normalised batch ``Float[B, 3, H, W]``, over the image's own
    ``image_sizes[i]`` pixels: ``[Float[h_i, w_i]]``.

    Each image goes through the U-Net (GroupNorm) on its own, padded only to the U-Net's multiple of 8:
    mixed sizes padded to one batch must not shift what the network sees. (With BatchNorm over such a
    batch - a 112 px crop padded to a 283 px field - the statistics learned from the padding did not hold
    at inference, and the head called the background of dataset1's crops foreground.)"""

    def __init__(self, width: int, levels: int = 4):
        super().__init__()
        self.net = UNet(width, levels, norm="group")

    def forward(self, tensors: torch.Tensor, image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        k = self.net.multiple
        out = []
        for x, (h, w) in zip(tensors, image_sizes):
            x = x[:, :h, :w]
            pad = (0, -w % k, 0, -h % k)
            out.append(self.net(F.pad(x, pad)[None] if any(pad) else x[None])[0, 0, :h, :w])
        return out

    def loss(self, tensors: torch.Tensor, image_sizes: list[tuple[int, int]], targets: list[dict],
             skip_label: int | None) -> dict[str, torch.Tensor]:
        """BCE + Dice against the union of each image's instance masks (those of class ``skip_label``,
        the nuclei, left out), over all the batch's image pixels."""
        logits = self(tensors, image_sizes)
        truths = []
        for lg, t in zip(logits, targets):
            keep = t["labels"] != skip_label if skip_label is not None else torch.ones_like(t["labels"], dtype=torch.bool)
            m = t["masks"][keep]
            truths.append(m.amax(dim=0).float()[: lg.shape[0], : lg.shape[1]] if len(m) else torch.zeros_like(lg))
        flat_logits = torch.cat([lg.reshape(-1) for lg in logits])[None]
        flat_truth = torch.cat([t.reshape(-1) for t in truths])[None]
        bce, dice = foreground_loss(flat_logits, flat_truth, torch.ones_like(flat_truth))
        return {"loss_outline": bce, "loss_outline_dice": dice}


class MaskRCNNWithOutline(MaskRCNN):
    """torchvision's Mask R-CNN plus an :class:`OutlineHead` trained in the same step (its losses added to
    the loss dict), or alone (``outline_only``: the Mask R-CNN is not run). Inference goes through
    :func:`hemaseg.predict.predict_cells`, which uses both."""

    def __init__(self, backbone, *, outline: int, outline_levels: int = 4, skip_label: int | None = None, **kwargs):
        super().__init__(backbone, **kwargs)
        self.outline = OutlineHead(outline, outline_levels)
        self.outline_skip_label = skip_label
        self.outline_only = False  # training computes the outline head's losses only (hemaseg train --outline-only)

    def forward(self, images, targets=None):
        if not self.training:
            return super().forward(images, targets)
        if targets is None:
            raise ValueError("targets are needed in training mode")
        batch, targets = self.transform(images, targets)
        if self.outline_only:
            return self.outline.loss(batch.tensors, batch.image_sizes, targets, self.outline_skip_label)
        features = self.backbone(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, features, targets)
        _, head_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        outline_losses = self.outline.loss(batch.tensors, batch.image_sizes, targets, self.outline_skip_label)
        return {**head_losses, **rpn_losses, **outline_losses}


def foreground_maps(model: MaskRCNNWithOutline, tensors: torch.Tensor, resized: list[tuple[int, int]],
                    sizes: list[tuple[int, int]], bf16: bool = False) -> list[np.ndarray]:
    """The outline head's foreground (``HxW bool``, probability >= 0.5) of each image of a batch, brought
    back from its ``resized`` size to its input ``size`` (bilinear on the probabilities). ``bf16``: the
    U-Net's convolutions in bfloat16 (CPU autocast), the probabilities in float32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits_all = model.outline(tensors, resized)
    out = []
    for logits, (rh, rw), (h, w) in zip(logits_all, resized, sizes):
        p = torch.sigmoid(logits.float())
        if (rh, rw) != (h, w):
            p = F.interpolate(p[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        out.append((p >= 0.5).cpu().numpy())
    return out


def refine_outlines(cells: Cells, foreground: np.ndarray, radius: float, skip_label: int | None = None,
                    area_range: tuple[float, float] = AREA_RANGE) -> Cells:
    """Redraw each cell's outline from ``foreground`` (``HxW bool``, the cells' pixels).

    A cell becomes the foreground pixels within ``radius`` px of its mask that are nearer to it than to
    any other cell's mask (pixels inside two masks go to the higher score), its largest connected part,
    holes filled. It keeps its own mask when that comes out empty or outside ``area_range`` times its
    area. Cells of class ``skip_label`` (nuclei) are left as they are and claim no pixels.

    >>> c = Cells(6, 8, np.array([[2, 1, 6, 5]]), [np.ones((4, 4), bool)], np.ones(1, np.float32), np.ones(1, np.int64))
    >>> fg = np.zeros((6, 8), bool); fg[1:5, 1:6] = True  # the cell is one column wider on the left
    >>> refine_outlines(c, fg, radius=2).boxes.tolist()
    [[1, 1, 6, 5]]
    """
    todo = np.flatnonzero(cells.labels != skip_label) if skip_label is not None else np.arange(len(cells))
    if not len(todo):
        return cells
    part = cells.select(todo)
    own = part.label_image().astype(np.int32)  # cell k of `part` -> k + 1
    dist, (iy, ix) = ndi.distance_transform_edt(own == 0, return_indices=True)
    claimed = np.where(foreground & (dist <= radius), own[iy, ix], 0)
    slices = ndi.find_objects(claimed, max_label=len(part))
    boxes, masks = cells.boxes.copy(), list(cells.masks)
    lo, hi = area_range
    for k, i in enumerate(todo):
        sl = slices[k]
        if sl is None:
            continue
        m = claimed[sl] == k + 1
        comp, n = ndi.label(m)
        if n > 1:
            m = comp == 1 + int(np.argmax(np.bincount(comp.ravel())[1:]))
        m = ndi.binary_fill_holes(m)
        if not lo * part.masks[k].sum() <= m.sum() <= hi * part.masks[k].sum():
            continue
        r0, r1, c0, c1 = mask_extent(m)
        y, x = sl[0].start, sl[1].start
        boxes[i] = (x + c0, y + r0, x + c1, y + r1)
        masks[i] = m[r0:r1, c0:c1]
    return Cells(cells.height, cells.width, boxes, masks, cells.scores, cells.labels, cells.nuclei)
