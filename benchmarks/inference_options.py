"""What speeds up segmentation on a CPU, measured on one trained model and the same images in one process:
threads, channels-last memory format, batching several images per call.

    .venv/bin/python benchmarks/inference_options.py --model runs/default/run/best.pt --data ../shared/data/wbc-zheng2018/dataset1

Times ``predict_cells`` (model call to sparse cells at score >= 0.5) per image over ``--images``
images, after a warm-up pass, ``--repeats`` times, and prints the median per option.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hemaseg.data.contract import image_to_tensor
from hemaseg.data.formats import open_dataset
from hemaseg.data.io import read_image
from hemaseg.model import load_model
from hemaseg.predict import PredictConfig, predict_cells


def per_image(model, images, batch: int, repeats: int) -> float:
    cfg = PredictConfig()
    predict_cells(model, images[:batch], cfg)  # warm-up
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(0, len(images), batch):
            predict_cells(model, images[i:i + batch], cfg)
        runs.append((time.perf_counter() - t) / len(images))
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    src = open_dataset(args.data)
    images = [image_to_tensor(read_image(r.image)) for r in src.refs[: args.images]]
    model, _ = load_model(args.model)
    threads = torch.get_num_threads()
    rows = []
    rows.append((f"baseline ({threads} threads, batch 1)", per_image(model, images, 1, args.repeats)))
    torch.set_num_threads(1)
    rows.append(("1 thread", per_image(model, images, 1, args.repeats)))
    torch.set_num_threads(threads)
    rows.append(("batch 4", per_image(model, images, 4, args.repeats)))
    model_cl = model.to(memory_format=torch.channels_last)
    rows.append(("channels-last", per_image(model_cl, images, 1, args.repeats)))
    model.to(memory_format=torch.contiguous_format)
    base = rows[0][1]
    print(f"\n{len(images)} images of {tuple(images[0].shape[1:])}, torch {torch.__version__}\n")
    print("| option | s/image | vs baseline |\n|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.4f} | x{base / s:.2f} |")


if __name__ == "__main__":
    main()
