"""Train a model on a dataset folder: split, loop, validate, checkpoint, resume, stop early.

A run folder holds ``config.json`` (model + training config; with ``diameter``, each dataset's measured
cell diameter), ``split.json`` (which images trained and
which validated), ``metrics.csv`` (one row per epoch), ``last.pt`` (everything to resume) and
``best.pt`` (the weights with the best validation mean IoU). Every file is written atomically.

Each epoch seeds its own randomness from ``(seed, epoch)``, so a resumed run continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler

from .cells import NUCLEUS_CLASS, nucleus_label
from .data.dataset import CellDataset, cell_diameter, collate, repeat_indices, repeat_length, split_record, split_refs
from .data.fields import ANNOTATES_RED, FieldConfig
from .data.formats import DatasetSource, open_dataset
from .data.io import DataError, csv_text, remove_stale_temps, write_json, write_text
from .data.transforms import AugmentConfig, build_train_transforms
from .errors import HemasegError, SettingError
from .metrics import format_score
from .distributed import backend as dist_backend
from .distributed import from_launcher, weights_checksum
from .engine import DivergedError, evaluate, train_one_epoch, training_precision
from .model import (
    ModelConfig,
    check_diameter,
    check_pixel_size,
    build_model,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)

SCHEDULES = ("cosine", "step", "constant")
DIVERGED_RATIO = 3.0  # an epoch whose mean loss exceeds this x the lowest before it stops the run


@dataclass(frozen=True)
class TrainConfig:
    """A training run. ``model.classes`` is filled in from the data.

    ``data`` is one dataset (folder or COCO JSON) or several, each split with ``seed`` on its own so
    every one is represented in validation. With ``diameter``, each dataset is resized so that the
    median diameter of its annotated cells (nuclei aside) becomes ``diameter`` px - datasets imaged at
    different magnifications meet at one cell size, which the model keeps (``model.diameter``) so that
    ``segment --diameter`` can bring new images to it. ``nuclei="auto"`` teaches the model the nuclei of the
    training data, where it has them, as instances of a last class ``"nucleus"``; ``"off"`` does not.
    """

    data: str | tuple[str, ...]
    out: str
    val: str | None = None
    val_fraction: float = 0.2
    format: str = "auto"
    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_steps: int = 100
    seed: int = 0
    patience: int | None = None  # stop after this many epochs without a better validation mean IoU
    workers: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision: float16 on CUDA, bfloat16 on a CPU with AMX/AVX512-BF16 (engine.training_precision)
    weights: str | None = None  # start from the weights of this hemaseg checkpoint
    nuclei: str = "auto"
    diameter: float | None = None  # bring every dataset's median cell diameter to this many px
    pixel_size: float | None = None  # bring every dataset to this many um per px (instead of diameter)
    data_pixel_size: tuple[float, ...] | None = None  # um/px of each dataset of ``data`` (else estimated, hemaseg.scale)
    repeat: tuple[float, ...] | None = None  # per dataset of ``data``: times each training sample is seen per epoch
    outline_only: bool = False  # train only the outline head; the rest keeps the ``weights`` it starts from
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        if not isinstance(self.data, str):
            object.__setattr__(self, "data", tuple(str(d) for d in self.data))
            if not self.data:
                raise SettingError("data: no dataset given")
        check_diameter(self.diameter)
        if self.pixel_size is not None:
            if self.diameter is not None:
                raise SettingError("give a training --pixel-size or a --diameter, not both")
            check_pixel_size(self.pixel_size)
        if self.data_pixel_size is not None:
            object.__setattr__(self, "data_pixel_size", tuple(float(v) for v in self.data_pixel_size))
            if self.pixel_size is None:
                raise SettingError("the datasets' pixel sizes (--data-pixel-size) need the run's --pixel-size")
            for v in self.data_pixel_size:
                check_pixel_size(v, "each --data-pixel-size")
            if len(self.data_pixel_size) != len(self.data_paths):
                raise SettingError(f"data_pixel_size: one value > 0 um/px per dataset ({len(self.data_paths)}), got {list(self.data_pixel_size)}")
        if self.repeat is not None:
            object.__setattr__(self, "repeat", tuple(float(r) for r in self.repeat))
            if len(self.repeat) != len(self.data_paths) or not all(r > 0 and math.isfinite(r) for r in self.repeat):
                raise SettingError(f"repeat: one factor > 0 per dataset ({len(self.data_paths)}), got {list(self.repeat)}")
        if self.outline_only and not (self.model.outline and self.weights):
            raise SettingError("outline_only trains the outline head of a trained model: it needs --outline and --weights")
        if self.nuclei not in ("auto", "off"):
            raise SettingError(f"nuclei must be 'auto' or 'off', got {self.nuclei!r}")
        if self.schedule not in SCHEDULES:
            raise SettingError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise SettingError("epochs and batch_size must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SettingError(f"lr must be a positive number, got {self.lr}")

    @property
    def data_paths(self) -> tuple[str, ...]:
        return (self.data,) if isinstance(self.data, str) else self.data

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d.setdefault("nuclei", "off")  # runs written before nuclei were learned
        model = ModelConfig.from_dict(d.pop("model"))
        aug = d.pop("augment")
        aug = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()})
        return cls(model=model, augment=aug, **d)


@dataclass
class TrainResult:
    out: Path
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    stopped_early: bool
    seconds: float


class RunExistsError(HemasegError, FileExistsError):
    """The output folder already holds a run and ``resume`` was not asked for."""


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``i``: linear warm-up over ``warmup``
    steps, then constant, cosine decay to 1% or a x0.1 step at 70% of ``total`` steps.

    >>> f = lr_lambda("cosine", 10, 110)
    >>> f(0), f(10), round(f(110), 3)
    (0.1, 1.0, 0.01)
    """
    def f(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        if schedule == "constant":
            return 1.0
        if schedule == "step":
            return 0.1 if i >= 0.7 * total else 1.0
        t = min(1.0, (i - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
    return f


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _seed_epoch(seed: int, epoch: int) -> None:
    """Seed the global generators the augmentation of ``epoch`` draws from."""
    torch.manual_seed(seed * 1_000_003 + epoch)
    np.random.seed((seed * 1_000_003 + epoch) % 2**32)


def _shuffle(seed: int, epoch: int) -> torch.Generator:
    """The generator of ``epoch``'s order of samples."""
    return torch.Generator().manual_seed(seed * 7_919 + epoch)


def _metrics_csv(history: list[dict[str, float]]) -> str:
    keys = list(dict.fromkeys(k for row in history for k in row))
    return csv_text([{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in history], keys)


Part = tuple[DatasetSource, list]  # a dataset and the samples of it taken


def prepare_data(cfg: TrainConfig) -> tuple[list[Part], list[Part]]:
    """Open the training data and the validation data (``cfg.val``, or a seeded split of each dataset)."""
    sources = [open_dataset(d, cfg.format) for d in cfg.data_paths]
    if cfg.val:
        val_source = open_dataset(cfg.val, cfg.format)
        return [(s, sorted(s.refs, key=lambda r: str(r.image))) for s in sources], [(val_source, val_source.refs)]
    train_parts, val_parts = [], []
    for s in sources:
        train_refs, val_refs = split_refs(s.refs, cfg.val_fraction, cfg.seed)
        train_parts.append((s, train_refs))
        if val_refs:
            val_parts.append((s, val_refs))
    return train_parts, val_parts


def _places(data: tuple[str, ...], val: str | None) -> tuple[tuple[str, ...], str | None]:
    """The run's datasets as resolved paths (to compare runs and spot --val among --data)."""
    return tuple(str(Path(d).resolve()) for d in data), None if val is None else str(Path(val).resolve())


def has_cells(source, refs: list) -> bool:
    """Whether any of ``refs`` (samples of ``source``) is annotated with a cell (reads masks until one is)."""
    from .data.io import read_label_image

    if source.format == "coco":
        return any(source.coco.imgToAnns.get(r.coco_id) for r in refs)
    return any(read_label_image(r.annotation).any() for r in refs)


def dataset_scales(cfg: TrainConfig, train_parts: list[Part], val_parts: list[Part], classes: tuple[str, ...],
                   log: Callable[[str], None]) -> tuple[dict[int, float], dict[str, float], float | None]:
    """How much each dataset is resized (by ``id`` of its source), its median cell diameter (px, by root),
    and the white-cell diameter the model will work at (None without ``cfg.diameter``/``cfg.pixel_size``).

    ``cfg.diameter``: every dataset's median cell diameter becomes it. ``cfg.pixel_size``: every dataset is
    brought from its own pixel size (``cfg.data_pixel_size``, or the median estimate of the bundled scale
    model over its images, logged) to that one; the model's diameter is then the median of the datasets'
    diameters at that scale (for ``segment --diameter``)."""
    resize = {id(s): 1.0 for s, _ in train_parts + val_parts}
    diameters: dict[str, float] = {}  # dataset root -> its median cell diameter (px), as measured
    if cfg.diameter is None and cfg.pixel_size is None:
        return resize, diameters, None
    trained = {id(s) for s, _ in train_parts}
    given = {id(s): px for (s, _), px in zip(train_parts, cfg.data_pixel_size or ())}  # train_parts follow cfg.data
    scaled = []
    for s, refs in train_parts + [(s, r) for s, r in val_parts if id(s) not in trained]:  # a --val set: its own
        d = cell_diameter(s, refs, classes, skip=(NUCLEUS_CLASS,))
        if d is None and cfg.diameter is not None:
            raise SettingError(f"{s.root}: no annotated cells to measure a diameter on")
        if d is not None:
            diameters[str(s.root)] = round(d, 2)
        if cfg.diameter is not None:
            resize[id(s)] = cfg.diameter / d
            log(f"{s.root}: median cell diameter {d:.1f} px -> resized x{resize[id(s)]:.3f} to {cfg.diameter:g} px")
            continue
        px, how = given.get(id(s)), "given"
        if px is None:
            px, how = dataset_pixel_size(s, refs), "estimated"
        resize[id(s)] = px / cfg.pixel_size
        if d is not None and id(s) in trained:
            scaled.append(d * resize[id(s)])
        log(f"{s.root}: {px:.4f} um/px ({how}) -> resized x{resize[id(s)]:.3f} to {cfg.pixel_size:g} um/px"
            + (f"; median cell diameter {d:.1f} px -> {d * resize[id(s)]:.1f} px" if d is not None else ""))
    model_diameter = cfg.diameter if cfg.diameter is not None else (round(float(np.median(scaled)), 2) if scaled else None)
    return resize, diameters, model_diameter


def dataset_pixel_size(source: DatasetSource, refs: list, limit: int = 40) -> float:
    """The median pixel size (um/px) the bundled scale model reads off up to ``limit`` of ``refs``' images."""
    from .data.io import read_image
    from .scale import bundled_scale_net, estimate_scale

    net = bundled_scale_net()
    if net is None:
        raise SettingError(f"{source.root}: give its pixel size (--data-pixel-size): this installation has no scale model to estimate it")
    picked = sorted(refs, key=lambda r: str(r.image))[:: max(1, len(refs) // limit)][:limit]
    values = [e.pixel_size for e in (estimate_scale(net, read_image(r.image)) for r in picked) if e.pixel_size]
    if not values:
        raise SettingError(f"{source.root}: no pixel size could be estimated from its images; give it with --data-pixel-size")
    return float(np.median(values))


def _has_nuclei(source: DatasetSource) -> bool:
    """Whether the dataset's targets carry ``nuclei`` (semantic masks; instance labels with nuclei/)."""
    return source.format == "semantic" or any(r.nuclei is not None for r in source.refs)


@dataclass
class _Data:
    """A run's data, ready to train on: its parts, classes, datasets and what the log says of them."""

    cfg: TrainConfig  # with the model config the data decides (classes, diameter, pixel size)
    train_parts: list[Part]
    val_parts: list[Part]
    classes: tuple[str, ...]
    nuclei_at: int | None  # the label of learned nuclei, None when nuclei are not learned
    diameters: dict
    train_ds: ConcatDataset
    val_loader: DataLoader | None
    repeat: list[float] | None
    skipped_fields: list[str]  # datasets that annotate red cells: no painted fields

    def log_augmentation(self, log: Callable[[str], None]) -> None:
        if self.cfg.augment.fields:
            log(f"whole fields: {self.cfg.augment.fields:.0%} of the training samples"
                + (f" (not of {', '.join(self.skipped_fields)}: they annotate red cells or platelets)" if self.skipped_fields else ""))
        if self.repeat is not None:
            log("samples per epoch: " + ", ".join(f"{s.root} x{r:g}" for (s, _), r in zip(self.train_parts, self.repeat)))


def _data(cfg: TrainConfig, state: dict | None, last_path: Path, log: Callable[[str], None]) -> _Data:
    """Open, check and scale the run's data; the classes (learned nuclei last) and the datasets."""
    data_places, val_place = _places(cfg.data_paths, cfg.val)
    if val_place is not None and val_place in data_places:
        log(f"warning: --val {cfg.val} is also training --data: its scores are not held out")
    train_parts, val_parts = prepare_data(cfg)
    if not any(has_cells(src, refs) for src, refs in train_parts):
        n = sum(len(refs) for _, refs in train_parts)
        raise DataError(f"{', '.join(str(src.root) for src, _ in train_parts)}: no cell in any of the {n} training "
                        "images' annotations: nothing to learn")
    names = [c for s, _ in train_parts + val_parts for c in s.classes]
    learn_nuclei = cfg.nuclei == "auto" and cfg.model.arch != "unet" and any(_has_nuclei(s) for s, _ in train_parts)
    if learn_nuclei or NUCLEUS_CLASS in names:  # the nucleus class is always last (see predict.ModelMethod)
        names = [c for c in names if c != NUCLEUS_CLASS] + [NUCLEUS_CLASS]
    classes = tuple(dict.fromkeys(names))
    resize, diameters, model_diameter = dataset_scales(cfg, train_parts, val_parts, classes, log)
    # the semantic U-Net baseline knows one class, whatever the data's
    mcfg = dataclasses.replace(cfg.model, classes=("cell",) if cfg.model.arch == "unet" else classes, diameter=model_diameter,
                               pixel_size=cfg.pixel_size)
    if state is not None and tuple(state["config"]["classes"]) != mcfg.classes:
        raise SettingError(f"{last_path}: the run was trained on classes {state['config']['classes']}, the data has {mcfg.classes}")
    cfg = dataclasses.replace(cfg, model=mcfg)
    nuclei_at = nucleus_label(classes) if learn_nuclei else None
    transforms = build_train_transforms(cfg.augment)
    fields = {id(s): cfg.augment.fields if not set(ANNOTATES_RED) & set(s.classes) else 0.0 for s, _ in train_parts}
    field_cfg = FieldConfig(rim=cfg.augment.field_rim)
    train_ds = ConcatDataset([CellDataset(s, refs, classes, transforms, nucleus_label=nuclei_at, fields=fields[id(s)],
                                          field_config=field_cfg, resize=resize[id(s)]) for s, refs in train_parts])
    val_loader = None
    if val_parts:
        val_ds = ConcatDataset([CellDataset(s, refs, classes, resize=resize[id(s)]) for s, refs in val_parts])
        val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate, num_workers=cfg.workers)
    return _Data(cfg, train_parts, val_parts, classes, nuclei_at, diameters, train_ds, val_loader,
                 list(cfg.repeat) if cfg.repeat is not None else None,  # train_parts follow cfg.data's order
                 [str(s.root) for s, _ in train_parts if not fields[id(s)]])


def _run_state(cfg: TrainConfig, resume: bool, log: Callable[[str], None]) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The run's config and, with ``resume``, the state of its ``last.pt`` (the saved run decides everything but
    its length); a run folder that holds a run is refused unless resumed, a resume with other data is refused."""
    out = Path(cfg.out)
    last_path = out / "last.pt"
    if not resume:
        if last_path.exists():
            raise RunExistsError(f"{out} already holds a training run (last.pt); pass --resume to continue it or choose another --out")
        return cfg, None
    if not last_path.is_file():
        raise FileNotFoundError(f"{last_path}: nothing to resume (no last.pt in {out})")
    state = read_checkpoint(last_path)
    for stale in remove_stale_temps(out):
        log(f"removed {stale.name}, left by a run killed while writing a file")
    saved = TrainConfig.from_dict(state["train"])
    given, before = _places(cfg.data_paths, cfg.val), _places(saved.data_paths, saved.val)
    if given != before:
        raise SettingError(f"{last_path}: the run was trained on --data {', '.join(before[0])}"
                           + (f" --val {before[1]}" if before[1] else "") + f", not {', '.join(given[0])}"
                           + (f" --val {given[1]}" if given[1] else "") + ": resume with the same data, or start "
                           "a new run with another --out")
    return dataclasses.replace(saved, epochs=max(cfg.epochs, saved.epochs)), state


def _model(cfg: TrainConfig, state: dict | None, device: torch.device, log: Callable[[str], None]) -> nn.Module:
    """The model to train, on ``device``: built from ``cfg.model`` (seeded), started from ``cfg.weights``
    in a new run (a resumed one brings its own weights), frozen but for the outline head with
    ``cfg.outline_only``."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, download=state is None)
    if cfg.weights and state is None:
        skipped = load_weights(model, read_checkpoint(cfg.weights)["model"], source=cfg.weights,
                               allow_head_mismatch=not cfg.outline_only, fresh="outline." if cfg.outline_only else None)
        what = "a new outline head" if cfg.outline_only else "new class heads"
        log(f"started from {cfg.weights}" + (f" ({what}: {len(skipped)} tensors initialised)" if skipped else ""))
    if cfg.outline_only:  # the Mask R-CNN is frozen and not even run in training: only the head's steps are paid
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("outline."))
        model.outline_only = True
        log("training the outline head only")
    model.to(device)
    if device.type == "cpu":  # channels-last: faster steps with bfloat16 (benchmarks/train_precision.py)
        model.to(memory_format=torch.channels_last)
    return model


def _optimisation(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int, device: torch.device, log: Callable[[str], None]):
    """``(optimizer, scheduler, precision, scaler)``: AdamW over the trainable weights, the learning-rate
    schedule over all the run's steps, the autocast precision (:func:`training_precision`) and, for
    float16, a gradient scaler."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.schedule, cfg.warmup_steps, steps_per_epoch * cfg.epochs))
    precision = training_precision(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda") if precision == torch.float16 else None
    if precision is not None:
        log(f"mixed precision: {str(precision).removeprefix('torch.')} forward passes (--no-amp: float32)")
    return optimizer, scheduler, precision, scaler


def _validate(net, val_loader, nucleus_label: int | None, losses: dict, row: dict, log: Callable[[str], None]) -> float:
    """Score the epoch's model on the validation images (their scores go into ``row`` as ``val_*``) and
    return what chooses the best epoch: the validation mean IoU; minus the training loss where there is no
    validation or it had nothing to score (said in the log)."""
    if val_loader is None:
        return -losses["loss"]
    scores = evaluate(net, val_loader, nucleus_label=nucleus_label)
    row.update({f"val_{k}": v for k, v in scores.items() if k != "images"})
    if math.isnan(scores["mean_iou"]):  # no true and no found cell in validation: nothing scored, the loss decides
        log(f"warning: epoch {row['epoch']}: no true and no found cell in the validation images: scores n/a, "
            "the best epoch is chosen by the loss")
        return -losses["loss"]
    return scores["mean_iou"]


def _epoch_line(cfg: TrainConfig, row: dict, improved: bool, group) -> str:
    """The log line of an epoch: its loss, validation scores, time, and whether it is the best so far."""
    val_txt = (f" val mean IoU {format_score(row['val_mean_iou'], 4)} F1@0.5 {format_score(row['val_f1_50'], 3)}"
               if "val_mean_iou" in row else "")
    agree = f", weights equal on all {group.world} processes" if group is not None else ""
    return f"epoch {row['epoch']}/{cfg.epochs} loss {row['loss']:.4f}{val_txt} ({row['train_s']:.0f}s{agree}){' *best' if improved else ''}"


def _epoch_loader(train_ds, cfg: TrainConfig, epoch: int, sizes: list[int], repeat: list[float] | None, group) -> DataLoader:
    """The training batches of ``epoch``: shuffled by the epoch's seed; with ``repeat`` factors the same
    drawn order in every process, each taking its share; under several processes a distributed sampler."""
    if repeat is not None:
        order = repeat_indices(sizes, repeat, _shuffle(cfg.seed, epoch))
        if group is not None:  # padded to a multiple of the processes (as DistributedSampler): equal shares
            order = (order + order[: -len(order) % group.world])[group.rank::group.world]
        return DataLoader(train_ds, batch_size=cfg.batch_size, sampler=order, collate_fn=collate, num_workers=cfg.workers)
    if group is None:
        return DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=_shuffle(cfg.seed, epoch),
                          collate_fn=collate, num_workers=cfg.workers)
    sampler = DistributedSampler(train_ds, group.world, group.rank, shuffle=True, seed=cfg.seed)
    sampler.set_epoch(epoch)
    return DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate, num_workers=cfg.workers)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; see the module docstring for the files written.

    Launched by ``torchrun`` (several processes), it trains with DistributedDataParallel: each process a
    share of every epoch's images (its own augmentation seed), gradients averaged; process 0 validates,
    logs and writes the run, and checks after each epoch that every process holds the same weights.
    """
    group = from_launcher()
    if group is not None and not group.main:
        log, progress = (lambda s: None), False
    out = Path(cfg.out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    cfg, state = _run_state(cfg, resume, log)
    d = _data(cfg, state, last_path, log)
    cfg, mcfg, classes, train_parts, val_parts = d.cfg, d.cfg.model, d.classes, d.train_parts, d.val_parts
    train_ds, val_loader, repeat, nuclei_at, diameters = d.train_ds, d.val_loader, d.repeat, d.nuclei_at, d.diameters
    device = group.device(cfg.device) if group is not None else _device(cfg.device)
    n_train, n_val = (sum(len(r) for _, r in parts) for parts in (train_parts, val_parts))
    log(f"data: {', '.join(f'{s.root} ({s.format})' for s, _ in train_parts)}, {n_train} training / {n_val} validation "
        f"images, classes {list(classes)}{' (nuclei learned as instances)' if nuclei_at else ''}; device {device}"
        + (f", {group.world} processes ({dist_backend()})" if group is not None else ""))
    d.log_augmentation(log)

    model = _model(cfg, state, device, log)
    world = group.world if group is not None else 1
    sizes = [len(r) for _, r in train_parts]
    epoch_len = len(train_ds) if repeat is None else repeat_length(sizes, repeat)
    steps_per_epoch = math.ceil(math.ceil(epoch_len / world) / cfg.batch_size)
    optimizer, scheduler, precision, scaler = _optimisation(model, cfg, steps_per_epoch, device, log)

    history: list[dict[str, float]] = []
    best_epoch, best_score, start_epoch = 0, -math.inf, 1
    if state is not None:
        load_weights(model, state["model"], source=str(last_path))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        best_epoch, best_score = int(state["best_epoch"]), float(state["best_score"])
        start_epoch = int(state["epoch"]) + 1
        log(f"resuming {out} at epoch {start_epoch}/{cfg.epochs}")
    elif group is None or group.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {"model": mcfg.to_dict(), "train": cfg.to_dict(), "data_diameters": diameters})
        write_json(out / "split.json", split_record([(s.root, r) for s, r in train_parts], [(s.root, r) for s, r in val_parts]))

    net = model  # the model itself; `model` may become its DistributedDataParallel wrapper
    if group is not None:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    t0 = time.perf_counter() - (history[-1]["time_s"] if history else 0.0)
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs + 1):
        _seed_epoch(cfg.seed + (7919 * group.rank if group is not None else 0), epoch)  # the epoch's augmentation
        loader = _epoch_loader(train_ds, cfg, epoch, sizes, repeat, group)
        te = time.perf_counter()
        kept = f"{last_path} keeps epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written"
        try:
            losses = train_one_epoch(model, optimizer, loader, device, scheduler=scheduler, scaler=scaler, autocast=precision,
                                     progress=progress, desc=f"epoch {epoch}/{cfg.epochs}")
        except DivergedError as err:
            raise DivergedError(f"training stopped in epoch {epoch}: {err}; {kept} (lr {cfg.lr:g})") from err
        lowest = min((r["loss"] for r in history), default=math.inf)
        if losses["loss"] > DIVERGED_RATIO * lowest:
            raise DivergedError(f"training diverged in epoch {epoch}: mean loss {losses['loss']:.4g} is over {DIVERGED_RATIO:g}x "
                                f"the lowest so far ({lowest:.4g}); lower the learning rate (--lr {cfg.lr:g}); {kept}")
        row: dict[str, float] = {"epoch": epoch, **losses, "lr": optimizer.param_groups[0]["lr"],
                                 "train_s": time.perf_counter() - te}
        if group is not None:
            checksums = group.gather(weights_checksum(net))
            if not all(math.isclose(c, checksums[0], rel_tol=1e-9, abs_tol=1e-6) for c in checksums):
                raise RuntimeError(f"epoch {epoch}: the processes hold different weights (checksums {checksums})")
        if group is not None and not group.main:
            group.broadcast(None)  # process 0's epoch row, after its validation
            if not group.broadcast(None):  # process 0's decision: go on?
                break
            continue
        score = _validate(net, val_loader, nuclei_at, losses, row, log)
        row["time_s"] = time.perf_counter() - t0
        history.append(row)
        improved = score > best_score
        if improved:
            best_epoch, best_score = epoch, score
            save_checkpoint(best_path, net, mcfg, epoch=epoch, metrics=row, data_diameters=diameters)
        save_checkpoint(last_path, net, mcfg, train=cfg.to_dict(), epoch=epoch, history=history,
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        scaler=scaler.state_dict() if scaler is not None else {},
                        best_epoch=best_epoch, best_score=best_score)
        write_text(out / "metrics.csv", _metrics_csv(history))
        log(_epoch_line(cfg, row, improved, group))
        stopped_early = cfg.patience is not None and epoch - best_epoch >= cfg.patience
        if group is not None:
            group.broadcast(row)
            group.broadcast(not stopped_early)
        if stopped_early:
            log(f"early stop: no better validation mean IoU for {cfg.patience} epochs")
            break
    if group is not None:
        group.barrier()
    best = history[best_epoch - 1] if history and best_epoch else {}
    return TrainResult(out, best_epoch, best, history, stopped_early, time.perf_counter() - t0)
