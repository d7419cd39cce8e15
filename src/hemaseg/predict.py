"""Run a model on images: contract images in, thresholded instances out."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from .cells import NUCLEUS_CLASS, Cells, mask_extent, nucleus_label
from .data.contract import crop_image, image_size, masks_to_boxes
from .errors import SettingError
from .hardware import cpu_has_native_bf16
from .model import check_diameter, check_fraction, check_pixel_size
from .outline import OUTLINE_RADIUS, foreground_maps, refine_outlines
from .scale import ScaleEstimate, ScaleNet, estimate_scale
from .tiling import segment_tiled, tile_cells, tiles


@dataclass(frozen=True)
class PredictConfig:
    """Which detections become cells: ``score >= score_threshold`` and mask pixels with
    probability ``>= mask_threshold``. ``amp``: on a CPU that computes bfloat16 natively
    (:func:`cpu_has_native_bf16`), run the convolutions of the backbone and of the outline head in
    bfloat16 (the heads, boxes and masks stay float32)."""

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    amp: bool = True


@torch.inference_mode()
def predict_cells(model: nn.Module, images: list[torch.Tensor], cfg: PredictConfig = PredictConfig()) -> list[Cells]:
    """Segment contract images (``CHW float [0,1]``, any sizes) into sparse :class:`~hemaseg.cells.Cells`
    (sorted by decreasing score).

    A torchvision Mask R-CNN's mask probabilities are resampled onto each detection's own box
    (:func:`_sparse`), never into a full-size canvas: memory grows with the cells' area, not with
    cells x image size. A model with an outline head redraws the outlines from its full-resolution
    foreground (:func:`hemaseg.outline.refine_outlines`). Other models (the U-Net baseline) return dense
    results, converted here.
    """
    heads = getattr(model, "roi_heads", None)
    was_training = model.training
    floor = heads.score_thresh if heads is not None else None
    model.eval()
    if heads is not None:  # masks are computed only for detections that will be kept: the mask head is the costly part
        heads.score_thresh = max(floor, cfg.score_threshold)
    device = next(model.parameters()).device
    sizes = [tuple(im.shape[-2:]) for im in images]
    bf16 = cfg.amp and device.type == "cpu" and cpu_has_native_bf16()
    try:
        if isinstance(model, GeneralizedRCNN):
            batch, _ = model.transform([im.to(device) for im in images])
            with area_caps(model, max(h * w for h, w in batch.image_sizes)):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    features = model.backbone(batch.tensors)
                if bf16:  # the RPN and the heads run in float32
                    features = type(features)((k, v.float()) for k, v in features.items())
                proposals, _ = model.rpn(batch, features)
                detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
            cells = [_sparse(d, resized, size, cfg) for d, resized, size in zip(detections, batch.image_sizes, sizes)]
            if getattr(model, "outline", None) is None:
                return cells
            skip = model.outline_skip_label  # an image without a cell to redraw keeps its (empty) result:
            todo = [i for i, c in enumerate(cells) if (c.labels != skip).any()]  # a red-cell field saves the U-Net
            if todo:
                resized = [batch.image_sizes[i] for i in todo]
                maps = foreground_maps(model, batch.tensors[todo], resized, [sizes[i] for i in todo], bf16=bf16)
                for i, fg, rs in zip(todo, maps, resized):
                    cells[i] = refine_outlines(cells[i], fg, OUTLINE_RADIUS * sizes[i][1] / rs[1], skip)
            return cells
        outputs = model([im.to(device) for im in images])
    finally:
        model.train(was_training)
        if heads is not None:
            heads.score_thresh = floor
    results = []
    for out, (h, w) in zip(outputs, sizes):
        keep = out["scores"] >= cfg.score_threshold
        masks = out["masks"][keep, 0] >= cfg.mask_threshold
        results.append(Cells.from_result({"masks": masks.cpu().numpy(), "labels": out["labels"][keep].cpu(),
                                          "scores": out["scores"][keep].cpu()}, h, w))
    return results


CAPS_AREA = 1024 * 1024  # the model's proposal and detection caps hold per this many (resized) pixels
MIN_CAP = 100  # ... but never fewer than this many proposals and detections per image


@contextmanager
def area_caps(model: GeneralizedRCNN, area: int):
    """Within the block, the RPN's pre/post-NMS proposal counts and the detections per image are the
    model's configured caps scaled by ``area / CAPS_AREA`` (at least :data:`MIN_CAP`): a dense whole
    field is not capped, and a crop holding a few cells does not send a thousand proposals through the
    box head. Restored afterwards."""
    rpn, heads = model.rpn, model.roi_heads
    saved = (rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"], heads.detections_per_img)
    k = area / CAPS_AREA
    scaled = [max(MIN_CAP, int(np.ceil(v * k))) for v in saved]
    rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"], heads.detections_per_img = scaled
    try:
        yield scaled
    finally:
        rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"], heads.detections_per_img = saved


def mask_grid(box: torch.Tensor, scale: tuple[float, float], size: tuple[int, int], m: int):
    """Where a detection's ``m x m`` mask lands in the input image.

    ``box`` is the detection's XYXY box in the model's (resized) image, in the coordinates torchvision's
    RoIAlign uses with ``aligned=False`` (a pixel's value sits at its integer index): the mask's cell
    ``j`` is the box's ``j``-th of ``m`` equal bins, and its value belongs at the bin's centre. ``scale``
    = (resized / input) per axis (y, x); ``size`` = the input image's (height, width).

    Returns ``(x0, y0, grid)``: the input pixels the mask may cover start at column ``x0``, row ``y0``;
    ``grid`` ``Float[1, h, w, 2]`` holds, for each of them, its place in the mask in
    :func:`torch.nn.functional.grid_sample`'s normalised units (``align_corners=False``).

    >>> x0, y0, g = mask_grid(torch.tensor([2., 2., 6., 6.]), (1.0, 1.0), (10, 10), 4)
    >>> x0, y0, tuple(g.shape)  # pixels 1..7 of each axis: the box and one bin around it
    (1, 1, (1, 7, 7, 2))
    >>> g[0, 1, 1].tolist(), g[0, 3, 3].tolist()  # pixel (2, 2): the mask's corner; pixel (4, 4): its centre
    ([-1.0, -1.0], [0.0, 0.0])
    """
    x0b, y0b, x1b, y1b = (float(v) for v in box)
    sy, sx = scale
    bw, bh = max(x1b - x0b, 1e-3), max(y1b - y0b, 1e-3)
    h, w = size

    def span(lo, hi, cell, s, n):  # input pixels whose centres, in resized coordinates, fall within one cell of the box
        first = max(int(np.floor((lo - cell + 0.5) / s - 0.5)), 0)
        last = min(int(np.ceil((hi + cell + 0.5) / s - 0.5)), n - 1)
        centres = (torch.arange(first, last + 1, dtype=torch.float32) + 0.5) * s - 0.5
        return first, 2 * (centres - lo) / (hi - lo) - 1

    x0, gx = span(x0b, x0b + bw, bw / m, sx, w)
    y0, gy = span(y0b, y0b + bh, bh / m, sy, h)
    gyy, gxx = torch.meshgrid(gy, gx, indexing="ij")
    return x0, y0, torch.stack([gxx, gyy], dim=-1)[None]


def _sparse(detections: dict, resized: tuple[int, int], size: tuple[int, int], cfg: PredictConfig) -> Cells:
    """Each detection's mask probabilities resampled (bilinear) onto the input pixels of its own box only
    (:func:`mask_grid`), thresholded at ``cfg.mask_threshold``.

    torchvision's ``paste_masks_in_image`` instead rounds the box to whole pixels and stretches the
    padded mask over it, which moves every outline by about half a pixel up and left and grows it:
    true masks cut by RoIAlign and put back that way keep mean IoU 0.968 on dataset1's 300 cells, this way
    0.9985 (56x56 masks; benchmarks/mask_placement.py)."""
    h, w = size
    keep = detections["scores"] >= cfg.score_threshold
    probs, boxes = detections["masks"][keep].float().cpu(), detections["boxes"][keep].float().cpu()
    labels, scores = detections["labels"][keep].cpu().numpy(), detections["scores"][keep].float().cpu().numpy()
    cells = Cells(h, w)
    if not len(probs):
        return cells
    scale = (resized[0] / h, resized[1] / w)
    out_boxes, masks, kept = [], [], []
    for i in range(len(probs)):
        x0, y0, grid = mask_grid(boxes[i], scale, size, probs.shape[-1])
        if grid.shape[1] == 0 or grid.shape[2] == 0:
            continue
        m = F.grid_sample(probs[i][None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
        local = (m >= cfg.mask_threshold).numpy()
        extent = mask_extent(local)
        if extent is None:
            continue
        r0, r1, c0, c1 = extent
        out_boxes.append((x0 + c0, y0 + r0, x0 + c1, y0 + r1))
        masks.append(local[r0:r1, c0:c1])
        kept.append(i)
    return Cells(h, w, np.array(out_boxes, np.int64).reshape(-1, 4), masks, scores[kept], labels[kept].astype(np.int64))


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
    tile: int = 1024  # px at the model's scale: larger images are segmented in overlapping tiles (hemaseg.tiling)
    overlap: int = 256  # px at the model's scale shared by neighbouring tiles: more than the largest cell
    exports: tuple[str, ...] = ()  # also write: imagej (ROI zip), qupath (GeoJSON), tiff (label TIFF for napari)
    diameter: float | None = None  # px: typical white-cell diameter in the images; resized to the model's (ModelConfig.diameter)
    amp: bool = True  # bfloat16 convolutions on a CPU that computes them natively (PredictConfig.amp)
    batch: int = 4  # images of one size per model call, at most a tile's pixels: the same cells, faster (run_methods)
    auto_scale: bool = True  # estimate each image's pixel size (hemaseg.scale) and bring it to the model's (image_scale)
    # also red cells and platelets (hemaseg.redcells), at each image's scale; None: when that scale is known
    # (a model with a pixel size, e.g. the bundled one, or pixel_size given): segment.Job.of decides
    smear_cells: bool | None = None

    def __post_init__(self):
        if self.nuclei not in NUCLEUS_MODES:
            raise SettingError(f"nuclei must be one of {NUCLEUS_MODES}, got {self.nuclei!r}")
        unknown = set(self.exports) - set(EXPORTS)
        if unknown:
            raise SettingError(f"unknown export(s) {sorted(unknown)}; choose from {EXPORTS}")
        check_diameter(self.diameter)
        check_pixel_size(self.pixel_size)
        check_fraction(self.score_threshold, "score threshold")
        if not 0 <= self.overlap < self.tile:
            raise SettingError(f"tile ({self.tile}) must exceed overlap ({self.overlap}) >= 0")
        if self.batch < 1:
            raise SettingError(f"batch must be >= 1 image, got {self.batch}")


class Method:
    """A segmentation method: contract image in, sparse :class:`~hemaseg.cells.Cells` (with ``nuclei``
    when the method predicts them) or a dense ``dict(masks, labels, scores)`` (CPU tensors, optional
    ``nuclei`` ``UInt8[N,H,W]``) out. ``classes[i]`` names label ``i + 1``."""

    name: str = "method"
    classes: tuple[str, ...] = ("cell",)
    source: str | None = None  # the model file it was loaded from, if any
    pixel_size: float | None = None  # um/px the method works at (a model trained at one); None: any
    diameter: float | None = None  # white-cell diameter (px) at that scale, for --diameter
    scale_net: ScaleNet | None = None  # reads each image's pixel size (hemaseg.scale)

    def __call__(self, image: torch.Tensor) -> dict:
        raise NotImplementedError

    def zoomed(self, factor: float):
        """Within the block, the method sees images resized by ``factor`` (a model resizes inside, so that
        its outlines come back at the input's own pixels); methods without a scale ignore it."""
        return nullcontext()

    def many(self, images: list[torch.Tensor]) -> list:
        """The method on each of ``images`` (contract tensors); a model runs them as one batch."""
        return [self(im) for im in images]


class ModelMethod(Method):
    """A trained hemaseg model (Mask R-CNN, or the U-Net baseline).

    A model trained with a ``"nucleus"`` class (:data:`hemaseg.cells.NUCLEUS_CLASS`) returns cells only;
    its nucleus instances are given to their cells (:func:`hemaseg.nuclei.assign_nuclei_cells`) as ``nuclei``.
    """

    def __init__(self, model: nn.Module, classes: tuple[str, ...], cfg: SegmentConfig = SegmentConfig(), name: str = "maskrcnn"):
        self.model, self.name = model.eval(), name
        classes = tuple(classes)
        self.nucleus_label = nucleus_label(classes)
        self.classes = tuple(c for c in classes if c != NUCLEUS_CLASS)
        if self.nucleus_label is not None and self.nucleus_label != len(classes):
            raise SettingError(f"the '{NUCLEUS_CLASS}' class must be the model's last class, got {classes}")
        self.predict_cfg = PredictConfig(cfg.score_threshold, cfg.mask_threshold, cfg.amp)

    @classmethod
    def from_checkpoint(cls, path, cfg: SegmentConfig = SegmentConfig(), device: str = "cpu") -> ModelMethod:
        from .model import load_model

        model, mcfg = load_model(path, device)
        if torch.device(device).type == "cpu":  # same cells, faster (docs/benchmarks.md: benchmarks/channels_last.py)
            model = model.to(memory_format=torch.channels_last)
        if cfg.diameter is not None:
            if mcfg.diameter is None:
                raise SettingError(f"{path}: the model was not trained at a cell diameter (hemaseg train --diameter or "
                                 f"--pixel-size), so --diameter cannot be used with it; use a model trained with one")
            if not hasattr(getattr(model, "transform", None), "scale"):
                raise SettingError(f"{path}: this model resizes to a fixed size (min_size), --diameter does not apply")
        method = cls(model, mcfg.classes, cfg, name="unet" if mcfg.arch == "unet" else "maskrcnn")
        method.source = str(Path(path).resolve())
        method.diameter = mcfg.diameter
        if hasattr(getattr(model, "transform", None), "scale"):  # (a min_size model resizes to a fixed size)
            method.pixel_size = mcfg.pixel_size
            if mcfg.pixel_size is not None and cfg.auto_scale and cfg.diameter is None and cfg.pixel_size is None:
                from .scale import bundled_scale_net

                method.scale_net = bundled_scale_net()
        return method

    @contextmanager
    def zoomed(self, factor: float):
        transform = getattr(self.model, "transform", None)
        if factor == 1.0 or not hasattr(transform, "scale"):
            yield
            return
        base = transform.scale
        transform.scale = base * factor
        try:
            yield
        finally:
            transform.scale = base

    def __call__(self, image: torch.Tensor) -> Cells:
        return self.many([image])[0]

    def many(self, images: list[torch.Tensor]) -> list[Cells]:
        found = predict_cells(self.model, images, self.predict_cfg)
        if self.nucleus_label is None:
            return found
        return [split_nucleus_instances(cells, self.nucleus_label) for cells in found]


def split_nucleus_instances(cells: Cells, nucleus_label: int) -> Cells:
    """A prediction with nucleus instances (label ``nucleus_label``) -> its cells, each with its nuclei
    (``Cells.nuclei``, :func:`hemaseg.nuclei.assign_nuclei_cells`)."""
    from .nuclei import assign_nuclei_cells

    is_nucleus = cells.labels == nucleus_label
    found = cells.select(~is_nucleus)
    found.nuclei = assign_nuclei_cells(found, cells.select(is_nucleus))
    return found


class ClassicalMethod(Method):
    """A scikit-image baseline of :mod:`hemaseg.baselines`; every cell has score 1."""

    def __init__(self, name: str):
        from .baselines import METHODS

        if name not in METHODS:
            raise SettingError(f"unknown method {name!r}; choose from maskrcnn, {', '.join(METHODS)}")
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


def image_scale(method: Method, image, cfg: SegmentConfig) -> ScaleEstimate:
    """The scale at which ``method`` sees ``image`` (``HWC`` array or ``CHW`` tensor), first that applies:

    1. ``cfg.diameter`` (the user's white-cell diameter, px): resized to the model's white-cell diameter;
    2. ``cfg.pixel_size`` (the user's um per px): resized to the model's pixel size;
    3. the image's own estimate (:func:`hemaseg.scale.estimate_scale`) when the method has a scale model
       and ``cfg.auto_scale``; an image with nothing to measure from is used as it is;
    4. otherwise the image is used as it is.

    The result's ``resize`` is what :func:`run_method` is to resize the image by.

    >>> m = Method(); m.pixel_size, m.diameter = 0.16, 80.0
    >>> image_scale(m, None, SegmentConfig(pixel_size=0.08)).resize, image_scale(m, None, SegmentConfig(diameter=160)).resize
    (0.5, 0.5)
    """
    if cfg.diameter is not None and method.diameter is not None:
        resize = method.diameter / cfg.diameter
        px = None if method.pixel_size is None else method.pixel_size * resize
        return ScaleEstimate(px, "diameter", False, note=f"from --diameter {cfg.diameter:g}", resize=resize)
    if cfg.pixel_size is not None:
        scale = ScaleEstimate(cfg.pixel_size, "pixel-size")
    elif method.scale_net is not None and method.pixel_size is not None and cfg.auto_scale:
        scale = estimate_scale(method.scale_net, image)
    else:
        return ScaleEstimate(None, "none", False, note="no scale model or scale estimate off")
    return dataclasses.replace(scale, resize=scale.factor(method.pixel_size))


def segment_image(method: Method, image, cfg: SegmentConfig) -> tuple[Cells, ScaleEstimate]:
    """``method`` on one image of any size at its own scale (:func:`image_scale`, :func:`run_method`)."""
    scale = image_scale(method, image, cfg)
    return run_method(method, image, cfg, scale.resize), scale


def run_method(method: Method, image, cfg: SegmentConfig, factor: float = 1.0) -> Cells:
    """``method`` on an image of any size (``CHW`` tensor or ``HWC`` array; tiled beyond ``cfg.tile`` px
    at the method's scale), seen resized by ``factor`` (:meth:`Method.zoomed`), filtered
    (:func:`filter_cells`): the reported cells, sparse, in the image's own pixels."""
    tile, overlap = _tiling(cfg, factor)
    with method.zoomed(factor):
        return filter_cells(segment_tiled(method, image, tile, overlap), cfg)


def _tiling(cfg: SegmentConfig, factor: float) -> tuple[int, int]:
    """``cfg.tile`` and ``cfg.overlap`` are pixels at the method's scale: in the image's pixels, divided by ``factor``."""
    tile = max(64, round(cfg.tile / factor))
    return tile, min(round(cfg.overlap / factor), tile - 1)


def run_methods(method: Method, images: list, cfg: SegmentConfig, factors: list[float] | None = None) -> list[Cells]:
    """:func:`run_method` on each of ``images`` (each resized by its ``factors[i]``, default 1), the same
    cells; images of one size and factor that fit in one tile go through ``method.many`` up to
    ``cfg.batch`` at a time, and no more pixels at once than one tile holds (memory as for one tile),
    larger ones tile by tile (the speed-up of ``segment_files``' batches of 4 is in docs/benchmarks.md:
    benchmarks/segment_batch.py)."""
    factors = list(factors) if factors is not None else [1.0] * len(images)
    out: list[Cells | None] = [None] * len(images)
    alike: dict[tuple[int, int, float], list[int]] = {}
    for i, (im, f) in enumerate(zip(images, factors)):
        h, w = image_size(im)
        tile, _ = _tiling(cfg, f)
        if h <= tile and w <= tile:
            alike.setdefault((h, w, f), []).append(i)
    for (h, w, f), idx in alike.items():
        tile, overlap = _tiling(cfg, f)
        ((crop, core),) = tiles(h, w, tile, overlap)
        step = max(1, min(cfg.batch, tile * tile // (h * w)))
        with method.zoomed(f):
            for s in range(0, len(idx), step):
                part = idx[s : s + step]
                for i, found in zip(part, method.many([crop_image(images[i], crop) for i in part])):
                    out[i] = filter_cells(tile_cells(found, crop, core, h, w), cfg)  # segment_tiled's one tile
    return [c if c is not None else run_method(method, im, cfg, f) for c, im, f in zip(out, images, factors)]
