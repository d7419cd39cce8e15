"""Mask R-CNN models (torchvision) by name, their frozen config, and safe checkpoint files.

Architectures:

* ``resnet18_fpn`` (default) - ResNet-18 with a 128-channel FPN, 128-channel box and mask heads and
  anchors from 16 px. Blood cells are 3-25 um, i.e. 5-150 px in the images we see, and a crop holds
  one to a few hundred of them: a light backbone at native resolution is enough, and trains from
  random weights on a CPU (see docs/benchmarks.md).
* ``resnet50_fpn`` - torchvision's ``maskrcnn_resnet50_fpn``, the original recipe's model.
* ``unet`` - not Mask R-CNN: the semantic U-Net baseline of :mod:`hemaseg.unet` (cells = connected
  components), behind the same interface so that it trains and evaluates the same way.

Input size: images are resized by the fixed factor ``scale`` (1.0 = native pixels), so cells keep
their size in pixels whatever the image size; ``min_size`` restores torchvision's "short side to N
px" rule (the recipe's 800 px) for whoever asks for it.

A checkpoint (``*.pt``) is a plain dict of tensors and JSON-able values, loaded with
``torch.load(weights_only=True)``: loading never executes code. Its ``config`` rebuilds the model.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights, resnet18, resnet50
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from .data.io import atomic_write
from .errors import HemasegError, SettingError

ARCHITECTURES = ("resnet18_fpn", "resnet50_fpn", "unet")
PRETRAINED = ("none", "imagenet", "coco")
CHECKPOINT_FORMAT = "hemaseg-checkpoint"
BUNDLED_MODEL = Path(__file__).parent / "models" / "default.pt"  # see models/MODEL_CARD.md
BUNDLED_SHA256 = "dc3a7331249765b50ae8eb7eeb25f8f9f227522474f3e8027d52826972622684"  # of the file: checked before use
BUNDLED_CLASSIFIER = BUNDLED_MODEL.parent / "celltypes.pt"  # its white-cell type classifier (hemaseg fit-classifier)
BUNDLED_MORPHOLOGY = BUNDLED_MODEL.parent / "redcells.pt"  # red-cell morphology classes (benchmarks/red_morphology.py)
CHECKPOINT_VERSION = 1


class CheckpointError(HemasegError, ValueError):
    """A model file that cannot be used: names the file and the reason."""


def load_marked(path: str | Path, marker: str, what: str, missing: str | None = None) -> dict[str, Any]:
    """A model file's dict, loaded safely (``weights_only=True``: no code runs), refused with a
    :class:`CheckpointError` naming the file unless it exists, loads and carries ``format == marker``.
    ``what`` names the kind of file in the messages ("scale model"; ``missing``: when there is none)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such {missing or what} file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: not a readable {what} (the file is empty)")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the refusal below says it all
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refusal, truncated zip, not a torch file at all
        raise CheckpointError(f"{p}: not a readable {what} ({_load_refusal(p, err)})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != marker:
        raise CheckpointError(f"{p}: not a hemaseg {what} (no '{marker}' marker)")
    return ckpt


def _load_refusal(path: Path, err: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in a user's words (torch's text is about its own API)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK") and isinstance(err, pickle.UnpicklingError) or head[:1] == b"\x80":
        return "it holds Python objects beyond tensors and plain values; refused, as loading it could run code"
    if head.startswith(b"PK"):
        return "a damaged PyTorch file: truncated or altered"
    return "not a PyTorch file"


#: plausible values of the scale options; outside them a value is a typing or unit error
DIAMETER_RANGE = (4.0, 4000.0)  # px: a white cell's diameter in an image
PIXEL_SIZE_RANGE = (0.005, 50.0)  # um per px


def _within(value, lo: float, hi: float) -> bool:
    try:
        return math.isfinite(value) and lo <= value <= hi
    except TypeError:
        return False


def check_diameter(value: float | None) -> None:
    """A cell diameter (``--diameter``, model, training and segmentation configs) is None or a plausible
    white-cell diameter in px (:data:`DIAMETER_RANGE`).

    >>> check_diameter(80.0); check_diameter(None)
    >>> check_diameter(0.001)
    Traceback (most recent call last):
    hemaseg.errors.SettingError: diameter must be 4-4000 px (a white cell's diameter in your images), got 0.001
    """
    if value is not None and not _within(value, *DIAMETER_RANGE):
        raise SettingError(f"diameter must be {DIAMETER_RANGE[0]:g}-{DIAMETER_RANGE[1]:g} px (a white cell's diameter "
                         f"in your images), got {value}")


def check_pixel_size(value: float | None, what: str = "pixel size") -> None:
    """A pixel size is None or plausible, in um per px (:data:`PIXEL_SIZE_RANGE`).

    >>> check_pixel_size(0.1); check_pixel_size(None)
    >>> check_pixel_size(-0.1)
    Traceback (most recent call last):
    hemaseg.errors.SettingError: pixel size must be 0.005-50 um/px, got -0.1
    """
    if value is not None and not _within(value, *PIXEL_SIZE_RANGE):
        raise SettingError(f"{what} must be {PIXEL_SIZE_RANGE[0]:g}-{PIXEL_SIZE_RANGE[1]:g} um/px, got {value}")


def check_fraction(value: float, what: str) -> None:
    """A probability-like option (a score threshold) is a number in [0, 1].

    >>> check_fraction(0.5, "score threshold"); check_fraction(float("nan"), "score threshold")
    Traceback (most recent call last):
    hemaseg.errors.SettingError: score threshold must be between 0 and 1, got nan
    """
    if not _within(value, 0.0, 1.0):
        raise SettingError(f"{what} must be between 0 and 1, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model. Saved in every checkpoint and as ``config.json``."""

    arch: str = "resnet18_fpn"
    classes: tuple[str, ...] = ("cell",)
    scale: float = 1.0
    min_size: int | None = None  # torchvision's rule (short side to min_size) instead of ``scale``
    max_size: int = 4096  # longest side after resizing
    fpn_channels: int | None = None  # FPN and head width; None: 128 for resnet18_fpn, 256 (fixed) for resnet50_fpn
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    rpn_batch_size: int = 128  # anchors sampled per image for the RPN loss (torchvision: 256)
    roi_batch_size: int = 64  # RoIs sampled per image for the heads' loss (torchvision: 512); a few cells per image
    rpn_post_nms_train: int = 300  # proposals kept per image in training (torchvision: 2000)
    rpn_post_nms_test: int = 1000  # at inference this and detections_per_image hold per 1024x1024 px, at least 100 (hemaseg.predict.area_caps)
    detections_per_image: int = 1000
    box_score_threshold: float = 0.05
    pretrained: str = "none"
    mask_roi: int = 14  # RoIAlign size of the mask head; its masks are twice that (torchvision: 14 -> 28x28)
    mask_channels: int | None = None  # width of the mask head's 4 convolutions; None: the FPN width
    diameter: float | None = None  # cell diameter (px) the model was trained at; see hemaseg.train, SegmentConfig.diameter
    pixel_size: float | None = None  # um per px the model was trained at (hemaseg.train --pixel-size); new images are brought to it
    outline: int = 0  # width of the full-resolution outline U-Net trained with the model (hemaseg.outline); 0: none
    outline_levels: int = 4  # its depth: the coarsest level sees 2**(levels-1) times fewer pixels each way

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise SettingError(f"unknown architecture {self.arch!r}; choose from {ARCHITECTURES}")
        if self.pretrained not in PRETRAINED:
            raise SettingError(f"pretrained must be one of {PRETRAINED}, got {self.pretrained!r}")
        if self.arch == "unet" and self.pretrained != "none":
            raise SettingError("the U-Net baseline trains from random weights only")
        if self.pretrained == "coco" and self.arch != "resnet50_fpn":
            raise SettingError("COCO weights exist only for resnet50_fpn")
        if not self.classes:
            raise SettingError("a model needs at least one class")
        if self.arch == "resnet50_fpn" and self.fpn_channels not in (None, 256):
            raise SettingError("resnet50_fpn has torchvision's fixed FPN width of 256 channels")
        if not self.scale > 0:
            raise SettingError(f"scale must be > 0, got {self.scale}")
        if not 7 <= self.mask_roi <= 64:
            raise SettingError(f"mask_roi must be in 7..64, got {self.mask_roi}")
        for name in ("rpn_batch_size", "roi_batch_size", "rpn_post_nms_train", "rpn_post_nms_test"):
            if getattr(self, name) < 1:
                raise SettingError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_diameter(self.diameter)
        check_pixel_size(self.pixel_size)
        if self.outline < 0 or (self.outline and self.arch == "unet"):
            raise SettingError(f"outline must be >= 0 (and only for Mask R-CNN architectures), got {self.outline} for {self.arch}")
        if not 2 <= self.outline_levels <= 6:
            raise SettingError(f"outline_levels must be in 2..6, got {self.outline_levels}")

    @property
    def channels(self) -> int:
        """FPN and head width (U-Net: channels at full resolution)."""
        return self.fpn_channels or {"resnet50_fpn": 256, "resnet18_fpn": 128, "unet": 16}[self.arch]

    @property
    def num_classes(self) -> int:
        """Including background."""
        return len(self.classes) + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise SettingError(f"unknown model config keys {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)

    @classmethod
    def recipe(cls, classes: tuple[str, ...] = ("cell",)) -> ModelConfig:
        """The original recipe: maskrcnn_resnet50_fpn with torchvision's defaults (800 px short side)."""
        return cls(arch="resnet50_fpn", classes=classes, min_size=800, max_size=1333,
                   anchor_sizes=(32, 64, 128, 256, 512), rpn_batch_size=256, roi_batch_size=512,
                   rpn_post_nms_train=2000, rpn_post_nms_test=1000, detections_per_image=100)


class ScaleTransform(GeneralizedRCNNTransform):
    """torchvision's transform with the resize replaced: multiply both sides by ``scale`` (capped so the
    long side stays <= ``max_size``) instead of stretching the short side to ``min_size``."""

    def __init__(self, scale: float, max_size: int, image_mean, image_std):
        super().__init__(min_size=1, max_size=max_size, image_mean=image_mean, image_std=image_std)
        self.scale = scale

    def resize(self, image: torch.Tensor, target: dict[str, Any] | None = None):
        h, w = image.shape[-2:]
        s = min(self.scale, self.max_size / max(h, w))
        if abs(s - 1.0) < 1e-6:
            return image, target
        size = (max(1, round(h * s)), max(1, round(w * s)))
        # antialiased when shrinking, as hemaseg.data.transforms.resize_pair shrinks the training data
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=s < 1)[0]
        if target is not None:
            target = dict(target)
            target["boxes"] = resize_boxes(target["boxes"], (h, w), size)
            if "masks" in target:
                m = target["masks"]
                target["masks"] = F.interpolate(m[:, None].float(), size=size)[:, 0].byte() if len(m) else m.new_zeros((0, *size))
        return image, target


def _download_error(what: str, err: Exception) -> RuntimeError:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return RuntimeError(
        f"could not download torchvision's {what} weights ({err.__class__.__name__}: {err}). "
        f"Pretrained weights need internet once; this machine seems offline. Fetch them where you are online "
        f"(they are cached in {cache}) and copy that folder here, or train with --pretrained none (the default)."
    )


def _load_torchvision(weights) -> dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, socket errors, HTTP errors: all mean "not available offline"
        raise _download_error(str(weights), err) from err


# trunk, its FPN input channels, box-head width per architecture
_TRUNKS = {"resnet18_fpn": (resnet18, [64, 128, 256, 512], 512, ResNet18_Weights.IMAGENET1K_V1),
           "resnet50_fpn": (resnet50, [256, 512, 1024, 2048], 1024, ResNet50_Weights.IMAGENET1K_V1)}


def build_model(cfg: ModelConfig, *, download: bool = True) -> nn.Module:
    """Build the Mask R-CNN described by ``cfg``: random weights, or torchvision's when ``cfg.pretrained``
    asks and ``download`` is true. ``download=False`` builds the same structure (frozen BatchNorm for
    pretrained models) without fetching anything: for loading a checkpoint, which brings its own weights.

    ``resnet50_fpn`` has exactly the structure of torchvision's ``maskrcnn_resnet50_fpn``, so its COCO
    weights load into it; only the class-specific predictors start anew.
    """
    if cfg.arch == "unet":
        from .unet import UNetSegmenter

        return UNetSegmenter(cfg.channels)
    if len(cfg.anchor_sizes) != 5:
        raise SettingError(f"{cfg.arch} needs 5 anchor sizes (one per FPN level), got {cfg.anchor_sizes}")
    pretrained = cfg.pretrained != "none"
    make_trunk, in_channels, box_width, imagenet = _TRUNKS[cfg.arch]
    # pretrained: torchvision's recipe (frozen BatchNorm, stem and layer1 frozen); from scratch: BatchNorm learns
    trunk = make_trunk(weights=None, norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d)
    if cfg.pretrained == "imagenet" and download:
        trunk.load_state_dict(_load_torchvision(imagenet))
    if pretrained:
        for name, p in trunk.named_parameters():
            if not name.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)
    c = cfg.channels
    backbone = BackboneWithFPN(
        trunk, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=in_channels, out_channels=c, extra_blocks=LastLevelMaxPool(),
    )
    extra = {}
    if cfg.outline:
        from .cells import nucleus_label
        from .outline import MaskRCNNWithOutline

        extra = {"outline": cfg.outline, "outline_levels": cfg.outline_levels, "skip_label": nucleus_label(cfg.classes)}
    model = (MaskRCNNWithOutline if cfg.outline else MaskRCNN)(
        backbone, num_classes=None, **extra,
        box_head=TwoMLPHead(c * 7 * 7, box_width), box_predictor=FastRCNNPredictor(box_width, cfg.num_classes),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=cfg.mask_roi, sampling_ratio=2),
        mask_head=MaskRCNNHeads(c, [cfg.mask_channels or c] * 4, 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_channels or c, cfg.mask_channels or c, cfg.num_classes),
        rpn_anchor_generator=AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), ((0.5, 1.0, 2.0),) * 5),
        rpn_batch_size_per_image=cfg.rpn_batch_size,
        box_batch_size_per_image=cfg.roi_batch_size,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_train,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_test,
        rpn_pre_nms_top_n_train=max(2000, cfg.rpn_post_nms_train),
        rpn_pre_nms_top_n_test=max(1000, cfg.rpn_post_nms_test),
        box_detections_per_img=cfg.detections_per_image,
        box_score_thresh=cfg.box_score_threshold,
    )
    if cfg.pretrained == "coco" and download:
        load_weights(model, _load_torchvision(MaskRCNN_ResNet50_FPN_Weights.COCO_V1), "torchvision COCO weights",
                     allow_head_mismatch=True)
    t = model.transform
    if cfg.min_size is not None:
        model.transform = GeneralizedRCNNTransform(cfg.min_size, cfg.max_size, t.image_mean, t.image_std)
    else:
        model.transform = ScaleTransform(cfg.scale, cfg.max_size, t.image_mean, t.image_std)
    return model


# ------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | Path, model: nn.Module, cfg: ModelConfig, **extra: Any) -> Path:
    """Write ``{format, version, config, model, **extra}`` atomically; ``extra`` must be tensors or
    JSON-able values (optimizer state, epoch, metrics) so that ``weights_only`` loading accepts it."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": cfg.to_dict(),
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}
    payload["digest"] = weights_digest(payload)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


WEIGHT_ENTRIES = ("model", "model_int8", "model_int8_scale")  # what a checkpoint's digest covers, with its config


def weights_digest(ckpt: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's model config and weights (names, dtypes, shapes and bytes, in name
    order): written into every checkpoint and checked by :func:`read_checkpoint`, so that a file whose
    weights or config were altered after saving is refused rather than silently loaded.

    >>> a = {"config": {"arch": "x"}, "model": {"w": torch.ones(2)}}
    >>> weights_digest(a) == weights_digest({**a, "epoch": 3}), weights_digest(a) == weights_digest({**a, "model": {"w": torch.zeros(2)}})
    (True, False)
    """
    h = hashlib.sha256(json.dumps(ckpt.get("config"), sort_keys=True).encode())
    for entry in WEIGHT_ENTRIES:
        for name in sorted(ckpt.get(entry) or {}):
            t = ckpt[entry][name].detach().cpu().contiguous()
            h.update(f"{entry}/{name}/{t.dtype}/{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def quantize_state(state: dict[str, torch.Tensor], min_numel: int = 4096) -> tuple[dict, dict, dict]:
    """Split weights into those kept as they are and 8-bit ones: every floating tensor of at least
    ``min_numel`` values and 2+ dimensions becomes ``int8`` with one float scale per output channel
    (symmetric, ``w ~ q * scale``). Returns ``(kept, int8, scales)``; :func:`dequantize_state` inverts it
    to within half a step per weight. A 4x smaller file for shipping a model.

    >>> w = torch.tensor([[0.5, -1.0] * 2048, [0.01, 0.02] * 2048])
    >>> kept, q, sc = quantize_state({"w": w, "b": torch.ones(2)})
    >>> list(kept), q["w"].dtype, float((dequantize_state(kept, q, sc)["w"] - w).abs().max()) < 0.004
    (['b'], torch.int8, True)
    """
    kept, q, scales = {}, {}, {}
    for k, v in state.items():
        if v.is_floating_point() and v.ndim >= 2 and v.numel() >= min_numel:
            scale = v.abs().amax(dim=tuple(range(1, v.ndim)), keepdim=True).float().clamp(min=1e-12) / 127
            q[k] = torch.round(v.float() / scale).clamp(-127, 127).to(torch.int8)
            scales[k] = scale
        else:
            kept[k] = v
    return kept, q, scales


def dequantize_state(kept: dict, q: dict, scales: dict) -> dict[str, torch.Tensor]:
    """The float weights of :func:`quantize_state`'s parts."""
    return {**kept, **{k: v.float() * scales[k] for k, v in q.items()}}


def compress_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy the checkpoint ``src`` to ``dst`` with its large weights stored in 8 bits
    (:func:`quantize_state`); :func:`read_checkpoint` restores float weights. Other entries are kept."""
    ckpt = read_checkpoint(src)
    kept, q, scales = quantize_state(ckpt["model"])
    payload = {**ckpt, "model": kept, "model_int8": q, "model_int8_scale": scales}
    payload["digest"] = weights_digest(payload)
    return atomic_write(dst, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``; no code runs) and check its format.
    Weights stored in 8 bits (:func:`compress_checkpoint`) come back as float."""
    p = Path(path)
    ckpt = load_marked(p, CHECKPOINT_FORMAT, "checkpoint", missing="model")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{p}: checkpoint version {ckpt.get('version')} is not supported (expected {CHECKPOINT_VERSION})")
    if not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{p}: a hemaseg checkpoint needs a 'model' weights dict and a 'config' dict")
    if "digest" in ckpt and weights_digest(ckpt) != ckpt["digest"]:
        raise CheckpointError(f"{p}: the weights or config do not match the digest written when the file was saved: "
                              "the file was altered or corrupted; refusing to load it")
    if "model_int8" in ckpt:
        q, scales = ckpt.pop("model_int8"), ckpt.pop("model_int8_scale", {})
        if set(q) != set(scales):
            raise CheckpointError(f"{p}: 8-bit weights without their scales ({sorted(set(q) ^ set(scales))[:3]})")
        ckpt["model"] = dequantize_state(ckpt["model"], q, scales)
    return ckpt


def data_diameters(path: str | Path) -> dict[str, float]:
    """The median cell diameter (px) of each dataset a checkpoint was trained on at ``--diameter``, by
    the dataset folder's name (``{}`` for a model trained without one)."""
    return {Path(k).name: float(v) for k, v in read_checkpoint(path).get("data_diameters", {}).items()}


@functools.lru_cache(maxsize=4)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, computed once per (path, size, modification time): a changed file is hashed again."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def default_model() -> Path:
    """The model shipped inside the package (:data:`BUNDLED_MODEL`, described in ``models/MODEL_CARD.md``)."""
    if not BUNDLED_MODEL.is_file():
        raise CheckpointError(f"{BUNDLED_MODEL}: the bundled model is missing from this installation; pass --model")
    stat = BUNDLED_MODEL.stat()
    digest = _file_sha256(BUNDLED_MODEL, stat.st_size, stat.st_mtime_ns)
    if digest != BUNDLED_SHA256:
        raise CheckpointError(f"{BUNDLED_MODEL}: SHA-256 {digest[:16]}... is not the bundled model's ({BUNDLED_SHA256[:16]}...): "
                              "the file was altered or corrupted; reinstall hemaseg or pass --model")
    return BUNDLED_MODEL


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild a model from a checkpoint, in eval mode. The architecture comes from the file itself."""
    ckpt = read_checkpoint(path)
    try:
        cfg = ModelConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bad model config in checkpoint ({err})") from err
    model = build_model(cfg, download=False)
    load_weights(model, ckpt["model"], source=str(path))
    return model.to(device).eval(), cfg


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, allow_head_mismatch: bool = False,
                 fresh: str | None = None) -> list[str]:
    """Load ``state`` into ``model``. With ``allow_head_mismatch`` (fine-tuning to other classes),
    tensors whose shape differs are skipped and their names returned; otherwise any mismatch is an
    error naming ``source``. Tensors named ``fresh...`` (a prefix: ``"outline."``, a head trained anew)
    may differ, be missing from ``state`` or be extra in it: the model keeps its own, their names
    returned."""
    own = model.state_dict()
    new: list[str] = []
    if fresh:
        part = [k for k in own if k.startswith(fresh)]
        if any(k not in state or state[k].shape != own[k].shape for k in part):  # another shape, or none: all anew
            new = part
            state = {k: v for k, v in state.items() if not k.startswith(fresh)}
        else:  # the same part: loaded; a part the model lacks is dropped
            state = {k: v for k, v in state.items() if k in own or not k.startswith(fresh)}
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and k not in new]
    unexpected = [k for k in state if k not in own]
    if (skipped and not allow_head_mismatch) or missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit this architecture "
            f"(shape mismatches: {skipped[:3]}, missing: {missing[:3]}, unexpected: {unexpected[:3]})"
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    return skipped + new
