"""Time the default model against the original recipe's configuration, same images, same process.

    .venv/bin/python benchmarks/speed_probe.py --data ../shared/data/wbc-zheng2018/dataset1 --images 8

Random weights: segmentation seconds per image, and seconds per training step (batch of 2 images,
forward + backward + AdamW step). An untrained model's cost depends on how many detections reach the
mask head, so both configurations keep the recipe's cap of 100 detections and a score floor of 0.05
(the worst case: 100 masks computed and pasted per image). ``--model best.pt`` adds a trained model
with its own settings. Prints a Markdown table and ratios.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from hemaseg.data.dataset import CellDataset, collate
from hemaseg.data.formats import open_dataset
from hemaseg.model import ModelConfig, build_model, load_model
from hemaseg.predict import PredictConfig, predict_cells


def _time_segment(model, images, score_threshold: float) -> float:
    cfg = PredictConfig(score_threshold=score_threshold)
    predict_cells(model, images[:1], cfg)  # warm-up
    t = time.perf_counter()
    for im in images:
        predict_cells(model, [im], cfg)
    return (time.perf_counter() - t) / len(images)


def _time_train_step(model, batches) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for images, targets in batches:
        t = time.perf_counter()
        losses = model(list(images), [{k: v[k] for k in ("boxes", "labels", "masks")} for v in targets])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sum(times[1:]) / max(1, len(times) - 1)  # first step is warm-up


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--model", help="a trained hemaseg checkpoint to time as well")
    args = ap.parse_args()
    src = open_dataset(args.data)
    ds = CellDataset(src, src.refs[: max(args.images, 2 * args.steps + 2)])
    samples = [ds[i] for i in range(len(ds))]
    images = [s[0] for s in samples[: args.images]]
    batches = [collate(samples[2 * i: 2 * i + 2]) for i in range(args.steps + 1)]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{len(images)} images of {tuple(images[0].shape[1:])}")
    rows = {}
    for name, cfg in (("default (resnet18_fpn, native size)", ModelConfig(detections_per_image=100)),
                      ("recipe (resnet50_fpn, 800 px)", ModelConfig.recipe())):
        torch.manual_seed(0)
        model = build_model(cfg)
        rows[name] = (_time_segment(model.eval(), images, 0.05), _time_train_step(model, batches) / 2)
    if args.model:
        model, _ = load_model(args.model)
        trained = _time_segment(model, images, PredictConfig().score_threshold)
    print("\n| configuration | segment s/image | train s/image-step |\n|---|---|---|")
    for name, (seg, step) in rows.items():
        print(f"| {name} | {seg:.3f} | {step:.3f} |")
    (d_seg, d_step), (r_seg, r_step) = rows.values()
    print(f"\nspeed-up of the default: segment x{r_seg / d_seg:.1f}, training step x{r_step / d_step:.1f}")
    if args.model:
        print(f"trained {args.model} (its own settings, score >= 0.5): segment {trained:.3f} s/image, "
              f"x{r_seg / trained:.1f} faster than the recipe")


if __name__ == "__main__":
    main()
