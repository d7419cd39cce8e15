"""Training and validation loops (no argument parsing, no files: see :mod:`hemaseg.train`)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import HemasegError
from .hardware import cpu_has_native_bf16
from .cells import Cells
from .evaluation import Scorer
from .predict import PredictConfig, predict_cells

MODEL_TARGET_KEYS = ("boxes", "labels", "masks")


class DivergedError(HemasegError, FloatingPointError):
    """The loss became NaN or infinite."""


def training_precision(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast precision of training on ``device`` (None: float32). ``amp`` asks for mixed precision:
    float16 on CUDA (with a gradient scaler), bfloat16 on a CPU that computes it natively (faster steps: the
    figures are in docs/benchmarks.md, benchmarks/train_precision.py), float32 on other CPUs."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    device: torch.device,
    *,
    scheduler=None,
    scaler: torch.amp.GradScaler | None = None,
    autocast: torch.dtype | None = None,
    grad_clip: float = 10.0,
    progress: bool = True,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each loss term and of their sum (``loss``).

    ``autocast``: run the forward pass in this lower precision (``torch.float16`` with a ``scaler`` on
    CUDA, ``torch.bfloat16`` on a CPU that computes it natively: :func:`training_precision`).
    Raises :class:`DivergedError` on a non-finite loss, before the optimizer step (weights stay finite).
    """
    model.train()
    sums: dict[str, float] = {}
    n = 0
    running = None
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for images, targets in bar:
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: t[k].to(device, non_blocking=True) for k in MODEL_TARGET_KEYS} for t in targets]
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergedError(f"loss is {value} ({values}); lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n += 1
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        sums["loss"] = sums.get("loss", 0.0) + value
        running = value if running is None else 0.9 * running + 0.1 * value
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    return {k: v / max(n, 1) for k, v in sums.items()}


def evaluate(
    model: nn.Module, loader: Iterable, cfg: PredictConfig = PredictConfig(), progress: bool = False,
    nucleus_label: int | None = None,
) -> dict[str, float]:
    """Whole-cell validation scores over ``loader``'s ``(images, targets)``, by the scorer of
    :mod:`hemaseg.evaluation` (:class:`~hemaseg.evaluation.Scorer`, without COCO AP):

    ``mean_iou``/``mean_dice`` - the recipe's per-image union-vs-union scores, averaged over images;
    ``f1_50``, ``precision_50``, ``recall_50`` - instance matching at IoU 0.5 pooled over all images.
    With ``nucleus_label`` (a model that learns nuclei as instances of that class) the nucleus instances
    are left out of those, and ``nucleus_dice`` (union vs union, images whose targets have nuclei) is added.
    """
    scorer = Scorer((0.5,), max_dets=None)
    for images, targets in tqdm(loader, desc="validate", disable=not progress, leave=False):
        for found, target in zip(predict_cells(model, list(images), cfg), targets):
            truth = Cells.from_result({**target, "scores": torch.ones(len(target["masks"]))}, found.height, found.width)
            nuclei = None
            if nucleus_label is not None:
                is_nucleus = found.labels == nucleus_label
                if "nuclei" in target and target["nuclei"].any():
                    nuclei = (target["nuclei"], found.select(is_nucleus).union())
                found = found.select(~is_nucleus)
            scorer.add(truth, found, nuclei=nuclei)
    s = scorer.summary()
    out = {key: s[key] for key in ("mean_iou", "mean_dice", "f1_50", "precision_50", "recall_50")}
    out["images"] = len(scorer.rows)
    if "nucleus_dice" in s:
        out["nucleus_dice"] = s["nucleus_dice"]
    return out
