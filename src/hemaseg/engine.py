"""Training and validation loops (no argument parsing, no files: see :mod:`hemaseg.train`)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import HemasegError
from .hardware import cpu_has_native_bf16
from .metrics import MatchCounter, dice, iou_matrix, mean_of, semantic_iou
from .predict import PredictConfig, predict

MODEL_TARGET_KEYS = ("boxes", "labels", "masks")


class DivergedError(HemasegError, FloatingPointError):
    """The loss became NaN or infinite."""


def training_precision(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast precision of training on ``device`` (None: float32). ``amp`` asks for mixed precision:
    float16 on CUDA (with a gradient scaler), bfloat16 on a CPU that computes it natively (x1.29 per
    training step on this project's 2-core Xeon with AMX: benchmarks/train_precision.py), float32 on other CPUs."""
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
    """Whole-cell validation scores over ``loader``'s ``(images, targets)``:

    ``mean_iou``/``mean_dice`` - the recipe's per-image union-vs-union scores, averaged over images;
    ``f1_50``, ``precision_50``, ``recall_50`` - instance matching at IoU 0.5 pooled over all images.
    With ``nucleus_label`` (a model that learns nuclei as instances of that class) the nucleus instances
    are left out of those, and ``nucleus_dice`` (union vs union, images whose targets have nuclei) is added.
    """
    ious, dices, nucleus = [], [], []
    counter = MatchCounter((0.5,))
    for images, targets in tqdm(loader, desc="validate", disable=not progress, leave=False):
        for pred, target in zip(predict(model, list(images), cfg), targets):
            cells = pred["masks"]
            if nucleus_label is not None:
                is_nucleus = pred["labels"] == nucleus_label
                cells = pred["masks"][~is_nucleus]
                if "nuclei" in target and target["nuclei"].any():
                    nucleus.append(dice(target["nuclei"], pred["masks"][is_nucleus]))
            ious.append(semantic_iou(target["masks"], cells))
            dices.append(dice(target["masks"], cells))
            counter.add(iou_matrix(target["masks"], cells))
    m = counter.result(0.5)
    out = {"mean_iou": mean_of(ious), "mean_dice": mean_of(dices),
           "f1_50": m.f1, "precision_50": m.precision, "recall_50": m.recall, "images": len(ious)}
    if nucleus:
        out["nucleus_dice"] = sum(nucleus) / len(nucleus)
    return out
