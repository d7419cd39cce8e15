"""Where a Mask R-CNN mask lands: torchvision's paste against hemaseg's mask grid (issue 6).

    .venv/bin/python benchmarks/mask_placement.py --zheng ../shared/data/wbc-zheng2018 \
        [--model src/hemaseg/models/default.pt --split runs/default/run/split.json]

1. True masks, no model: each dataset1 cell is cut into an MxM grid by RoIAlign in its box (exactly how
   torchvision makes the mask head's training targets) and put back into the image, once with
   torchvision's ``paste_masks_in_image`` (box rounded to whole pixels, padded mask stretched over it)
   and once with ``hemaseg.predict._sparse`` (each input pixel's centre sampled in the grid,
   :func:`hemaseg.predict.mask_grid`). Reported: mean IoU with the true mask, mean centroid shift
   (dx, dy, px) and area ratio - the ceiling a perfect mask head would reach through each paste.
2. With ``--model``: the model's held-out whole-cell mean IoU on dataset1 and dataset2 (each at its
   measured diameter), the same detections placed by each paste.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes
from torchvision.models.detection.transform import resize_boxes

import hemaseg.predict as hp
from hemaseg.data.contract import masks_to_boxes
from hemaseg.data.dataset import select_refs
from hemaseg.data.formats import open_dataset
from hemaseg.evaluation import evaluate_method, load_truth
from hemaseg.model import data_diameters
from hemaseg.cells import Cells

sys.path.insert(0, str(Path(__file__).parent))
from default_model import markdown_table  # noqa: E402


def torchvision_sparse(detections: dict, resized, size, cfg) -> Cells:
    """What hemaseg did before the mask grid: torchvision's paste of the kept detections."""
    keep = detections["scores"] >= cfg.score_threshold
    boxes = resize_boxes(detections["boxes"][keep], resized, size)
    masks = paste_masks_in_image(detections["masks"][keep], boxes, size)[:, 0] >= cfg.mask_threshold
    return Cells.from_result({"masks": masks.cpu().numpy(), "labels": detections["labels"][keep].cpu(),
                              "scores": detections["scores"][keep].cpu()}, *size)


def _measure(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float, float]:
    yp, xp = np.nonzero(pred)
    yt, xt = np.nonzero(truth)
    return (pred & truth).sum() / (pred | truth).sum(), xp.mean() - xt.mean(), yp.mean() - yt.mean(), pred.sum() / truth.sum()


def true_mask_round_trip(zheng: Path) -> list[dict]:
    source = open_dataset(zheng / "dataset1")
    rows = []
    for m in (28, 56):
        found = {"torchvision paste": [], "hemaseg mask grid": []}
        for ref in source.refs:
            _, truth = load_truth(source, ref)
            for k in range(len(truth)):
                t = np.zeros((truth.height, truth.width), bool)
                x0, y0, x1, y1 = truth.boxes[k]
                t[y0:y1, x0:x1] = truth.masks[k]
                tt = torch.from_numpy(t[None].astype(np.uint8))
                box = masks_to_boxes(tt)
                probs = project_masks_on_boxes(tt, box, torch.zeros(1, dtype=torch.int64), m)[:, None]
                det = {"masks": probs, "boxes": box, "scores": torch.ones(1), "labels": torch.ones(1, dtype=torch.int64)}
                size = t.shape
                found["torchvision paste"].append(_measure(torchvision_sparse(det, size, size, hp.PredictConfig()).union(), t))
                found["hemaseg mask grid"].append(_measure(hp._sparse(det, size, size, hp.PredictConfig()).union(), t))
        for name, values in found.items():
            v = np.array(values)
            rows.append({"mask grid": f"{m}x{m}", "paste": name, "cells": len(v), "mean IoU": v[:, 0].mean(),
                         "dx px": v[:, 1].mean(), "dy px": v[:, 2].mean(), "area ratio": v[:, 3].mean()})
    return rows


def model_scores(model: Path, split: Path, zheng: Path) -> list[dict]:
    from hemaseg.predict import ModelMethod, SegmentConfig

    diameters = data_diameters(model)
    rows = []
    for paste, fn in (("torchvision paste", torchvision_sparse), ("hemaseg mask grid", hp._sparse)):
        saved = hp._sparse
        hp._sparse = fn
        try:
            row = {"paste": paste}
            for name in ("dataset1", "dataset2"):
                source = open_dataset(zheng / name)
                refs = select_refs(source.refs, source.root, split, "val")
                cfg = SegmentConfig(diameter=diameters.get(name))
                method = ModelMethod.from_checkpoint(model, cfg)
                method.model.outline = None  # Mask R-CNN's own masks: the paste is what is compared
                row[f"{name} mean IoU"] = evaluate_method(method, source, refs, cfg, progress=False).summary["mean_iou"]
            rows.append(row)
        finally:
            hp._sparse = saved
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zheng", type=Path, default=Path("../shared/data/wbc-zheng2018"))
    ap.add_argument("--model", type=Path)
    ap.add_argument("--split", type=Path, help="the model's run split.json (default: beside the model)")
    args = ap.parse_args()
    print(markdown_table(true_mask_round_trip(args.zheng)) + "\n", flush=True)
    if args.model:
        print(markdown_table(model_scores(args.model, args.split or args.model.parent / "split.json", args.zheng)))


if __name__ == "__main__":
    main()
