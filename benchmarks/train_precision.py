"""Seconds per training image-step of the bundled recipe's model, by precision, memory format and RoI
sampling, on the same images in one process (issue 6: training time).

    .venv/bin/python benchmarks/train_precision.py \\
        roi_batch_size=128,rpn_post_nms_train=1000:fp32 roi_batch_size=128,rpn_post_nms_train=1000:bf16 \\
        roi_batch_size=128,rpn_post_nms_train=1000:bf16:cl default:fp32 default:bf16:cl

Each argument is ``MODEL:PRECISION[:cl]``: ``MODEL`` is ``default`` or comma-separated ``ModelConfig``
integer fields (over the recipe's ``outline=16``, diameter 80), ``PRECISION`` ``fp32`` or ``bf16``
(CPU autocast, as ``hemaseg train`` uses on a CPU with AMX), ``cl`` channels-last weights. Batches of 4:
two dataset1 crops and two dataset2 crops, each resized to the recipe's 80 px cell diameter; the whole
step (forward with the outline head, backward, AdamW) is timed, the first batch being a warm-up.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from hemaseg.data.dataset import CellDataset, cell_diameter, collate
from hemaseg.data.formats import open_dataset
from hemaseg.model import ModelConfig, build_model

CLASSES = ("cell", "nucleus")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", metavar="MODEL:PRECISION[:cl]")
    ap.add_argument("--zheng", default="../shared/data/wbc-zheng2018")
    ap.add_argument("--batches", type=int, default=6)
    args = ap.parse_args()
    parts = []
    for name in ("dataset1", "dataset2"):
        src = open_dataset(os.path.join(args.zheng, name))
        refs = src.refs[: 2 * args.batches]
        parts.append(CellDataset(src, refs, CLASSES, nucleus_label=2, resize=80 / cell_diameter(src, refs, CLASSES, skip=("nucleus",))))
    batches = [collate([parts[0][2 * b], parts[0][2 * b + 1], parts[1][2 * b], parts[1][2 * b + 1]]) for b in range(args.batches)]
    print(f"{torch.get_num_threads()} threads; {len(batches) - 1} timed batches of 4", flush=True)
    for run in args.runs:
        spec, precision, *layout = run.split(":")
        kw = {k: int(v) for k, v in (kv.split("=") for kv in spec.split(","))} if spec != "default" else {}
        torch.manual_seed(0)
        model = build_model(ModelConfig(classes=CLASSES, diameter=80.0, **{"outline": 16, **kw})).train()
        if layout == ["cl"]:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        seconds = 0.0
        for b, (images, targets) in enumerate(batches):
            targets = [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets]
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = sum(model(list(images), targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if b:  # the first batch warms up
                seconds += time.perf_counter() - t0
        print(f"{run}: {seconds / (4 * (len(batches) - 1)):.3f} s per image-step", flush=True)


if __name__ == "__main__":
    main()
