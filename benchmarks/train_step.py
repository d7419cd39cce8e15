"""Seconds per training image-step of model options, by stage, on the same images in one process.

    .venv/bin/python benchmarks/train_step.py default mask_roi=28 mask_roi=28,mask_channels=64

Each argument is ``default`` or comma-separated ``ModelConfig`` integer fields. 16 dataset1 crops in
batches of 4 (nuclei learned as instances, as in training); the first batch is a warm-up; prints the
forward time of backbone, RPN and RoI heads and the backward time, per image.
"""

from __future__ import annotations

import argparse
import time

import torch

from hemaseg.data.dataset import CellDataset, collate
from hemaseg.data.formats import open_dataset
from hemaseg.model import ModelConfig, build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--data", default="../shared/data/wbc-zheng2018/dataset1")
    args = ap.parse_args()
    src = open_dataset(args.data)
    ds = CellDataset(src, src.refs[:16], classes=("cell", "nucleus"), nucleus_label=2)
    batches = [collate([ds[i] for i in range(4 * b, 4 * b + 4)]) for b in range(4)]
    for spec in args.configs:
        kw = {k: int(v) for k, v in (kv.split("=") for kv in spec.split(","))} if spec != "default" else {}
        torch.manual_seed(0)
        model = build_model(ModelConfig(classes=("cell", "nucleus"), **kw)).train()
        total = {"backbone": 0.0, "rpn": 0.0, "roi heads": 0.0, "backward": 0.0}
        for b, (images, targets) in enumerate(batches):
            targets = [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets]
            t0 = time.perf_counter()
            batch, targets = model.transform(list(images), targets)
            features = model.backbone(batch.tensors)
            t1 = time.perf_counter()
            proposals, rpn_losses = model.rpn(batch, features, targets)
            t2 = time.perf_counter()
            _, roi_losses = model.roi_heads(features, proposals, batch.image_sizes, targets)
            t3 = time.perf_counter()
            sum([*rpn_losses.values(), *roi_losses.values()]).backward()
            t4 = time.perf_counter()
            if b:  # the first batch warms up
                for key, dt in zip(total, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    total[key] += dt
        n = 4 * (len(batches) - 1)
        print(spec, {k: round(v / n, 3) for k, v in total.items()}, "total", round(sum(total.values()) / n, 3), flush=True)


if __name__ == "__main__":
    main()
