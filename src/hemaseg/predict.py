"""Run a model on images: contract images in, thresholded instances out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data.contract import masks_to_boxes
from .tiling import Cells, segment_tiled


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
    heads = getattr(model, "roi_heads", None)  # a Mask R-CNN; the U-Net baseline has none
    was_training = model.training
    floor = heads.score_thresh if heads is not None else None
    model.eval()
    if heads is not None:  # masks are computed only for detections that will be kept: the mask head is the costly part
        heads.score_thresh = max(floor, cfg.score_threshold)
    device = next(model.parameters()).device
    try:
        outputs = model([im.to(device) for im in images])
    finally:
        model.train(was_training)
        if heads is not None:
            heads.score_thresh = floor
    results = []
    for out in outputs:
        keep = out["scores"] >= cfg.score_threshold
        masks = (out["masks"][keep, 0] >= cfg.mask_threshold).to(torch.uint8)
        results.append({"boxes": out["boxes"][keep].cpu(), "labels": out["labels"][keep].cpu(),
                        "scores": out["scores"][keep].cpu(), "masks": masks.cpu()})
    return results


# ------------------------------------------------------------------------------ methods
NUCLEUS_MODES = ("auto", "split", "off")
EXPORTS = ("imagej", "qupath", "tiff")  # see hemaseg.export


@dataclass(frozen=True)
class SegmentConfig:
    """How raw instances become reported cells, and what is written."""

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    min_area: int = 0  # px: smaller cells are dropped
    drop_border: bool = False  # drop cells touching the image border
    pixel_size: float | None = None  # um per pixel: adds um columns
    nuclei: str = "auto"  # white-cell nuclei: auto (learned if the model has them, else split), split, off
    tile: int = 1024  # px: larger images are segmented in overlapping tiles (hemaseg.tiling)
    overlap: int = 256  # px shared by neighbouring tiles: more than the largest cell
    exports: tuple[str, ...] = ()  # also write: imagej (ROI zip), qupath (GeoJSON), tiff (label TIFF for napari)

    def __post_init__(self):
        if self.nuclei not in NUCLEUS_MODES:
            raise ValueError(f"nuclei must be one of {NUCLEUS_MODES}, got {self.nuclei!r}")
        unknown = set(self.exports) - set(EXPORTS)
        if unknown:
            raise ValueError(f"unknown export(s) {sorted(unknown)}; choose from {EXPORTS}")
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"tile ({self.tile}) must exceed overlap ({self.overlap}) >= 0")


class Method:
    """A segmentation method: contract image in, ``dict(masks, labels, scores, boxes)`` out (CPU tensors),
    plus ``nuclei`` (``UInt8[N,H,W]``, each cell's learned nucleus) when the method predicts them.
    ``classes[i]`` names label ``i + 1``."""

    name: str = "method"
    classes: tuple[str, ...] = ("cell",)

    def __call__(self, image: torch.Tensor) -> dict:
        raise NotImplementedError


class ModelMethod(Method):
    """A trained hemaseg model (Mask R-CNN, or the U-Net baseline).

    A model trained with a ``"nucleus"`` class (:data:`hemaseg.nuclei.NUCLEUS_CLASS`) returns cells only;
    its nucleus instances are given to their cells (:func:`hemaseg.nuclei.assign_nuclei`) as ``nuclei``.
    """

    def __init__(self, model: nn.Module, classes: tuple[str, ...], cfg: SegmentConfig = SegmentConfig(), name: str = "maskrcnn"):
        from .nuclei import NUCLEUS_CLASS

        self.model, self.name = model.eval(), name
        classes = tuple(classes)
        self.nucleus_label = classes.index(NUCLEUS_CLASS) + 1 if NUCLEUS_CLASS in classes else None
        self.classes = tuple(c for c in classes if c != NUCLEUS_CLASS)
        if self.nucleus_label is not None and self.nucleus_label != len(classes):
            raise ValueError(f"the '{NUCLEUS_CLASS}' class must be the model's last class, got {classes}")
        self.predict_cfg = PredictConfig(cfg.score_threshold, cfg.mask_threshold)

    @classmethod
    def from_checkpoint(cls, path, cfg: SegmentConfig = SegmentConfig(), device: str = "cpu") -> ModelMethod:
        from .model import load_model

        model, mcfg = load_model(path, device)
        return cls(model, mcfg.classes, cfg, name="unet" if mcfg.arch == "unet" else "maskrcnn")

    def __call__(self, image: torch.Tensor) -> dict:
        out = predict(self.model, [image], self.predict_cfg)[0]
        if self.nucleus_label is None:
            return out
        return split_nucleus_instances(out, self.nucleus_label)


def split_nucleus_instances(result: dict, nucleus_label: int) -> dict:
    """A prediction with nucleus instances (label ``nucleus_label``) -> its cells, with ``nuclei``
    (``UInt8[N,H,W]``) holding each cell's nuclei."""
    from .nuclei import assign_nuclei

    is_nucleus = result["labels"] == nucleus_label
    cells = {k: v[~is_nucleus] for k, v in result.items()}
    nuclei = assign_nuclei(cells["masks"].numpy(), result["masks"][is_nucleus].numpy())
    cells["nuclei"] = torch.from_numpy(nuclei)
    return cells


class ClassicalMethod(Method):
    """A scikit-image baseline of :mod:`hemaseg.baselines`; every cell has score 1."""

    def __init__(self, name: str):
        from .baselines import METHODS

        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; choose from maskrcnn, {', '.join(METHODS)}")
        self.name = name

    def __call__(self, image: torch.Tensor) -> dict:
        from .baselines import segment_classical

        masks = torch.from_numpy(segment_classical(image, self.name))
        n = len(masks)
        return {"masks": masks, "labels": torch.ones(n, dtype=torch.int64), "scores": torch.ones(n),
                "boxes": masks_to_boxes(masks)}


def filter_cells(cells: Cells, cfg: SegmentConfig) -> Cells:
    """Drop cells under ``cfg.min_area`` px or (``drop_border``) touching the image border (with their
    nuclei, if any); sort by decreasing score."""
    keep = np.ones(len(cells), bool)
    if len(cells):
        if cfg.min_area:
            keep &= np.array([m.sum() for m in cells.masks]) >= cfg.min_area
        if cfg.drop_border:
            b = cells.boxes
            keep &= ~((b[:, 0] == 0) | (b[:, 1] == 0) | (b[:, 2] == cells.width) | (b[:, 3] == cells.height))
    idx = np.flatnonzero(keep)
    return cells.select(idx[np.argsort(-cells.scores[idx], kind="stable")])


def run_method(method: Method, image, cfg: SegmentConfig) -> Cells:
    """``method`` on an image of any size (``CHW`` tensor or ``HWC`` array; tiled beyond ``cfg.tile``),
    filtered (:func:`filter_cells`): the reported cells, sparse."""
    return filter_cells(segment_tiled(method, image, cfg.tile, cfg.overlap), cfg)
