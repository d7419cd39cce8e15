"""Run a model on images: contract images in, thresholded instances out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PredictConfig:
    """Which detections become cells: ``score >= score_threshold`` and mask pixels with
    probability ``>= mask_threshold``."""

    score_threshold: float = 0.5
    mask_threshold: float = 0.5


@torch.inference_mode()
def predict(model: nn.Module, images: list[torch.Tensor], cfg: PredictConfig = PredictConfig()) -> list[dict]:
    """Segment contract images (``CHW float [0,1]``, any sizes) with a Mask R-CNN in eval mode.

    Returns one dict per image: ``boxes`` Float[N,4] XYXY, ``labels`` Int64[N], ``scores`` Float[N],
    ``masks`` UInt8[N,H,W] (binary, at the input image's size), sorted by decreasing score, on the CPU.
    """
    was_training, floor = model.training, model.roi_heads.score_thresh
    model.eval()
    # masks are computed only for detections that will be kept: the mask head is the costly part
    model.roi_heads.score_thresh = max(floor, cfg.score_threshold)
    device = next(model.parameters()).device
    try:
        outputs = model([im.to(device) for im in images])
    finally:
        model.train(was_training)
        model.roi_heads.score_thresh = floor
    results = []
    for out in outputs:
        keep = out["scores"] >= cfg.score_threshold
        masks = (out["masks"][keep, 0] >= cfg.mask_threshold).to(torch.uint8)
        results.append({"boxes": out["boxes"][keep].cpu(), "labels": out["labels"][keep].cpu(),
                        "scores": out["scores"][keep].cpu(), "masks": masks.cpu()})
    return results
