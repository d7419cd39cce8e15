"""Channels-last memory format for segmentation on the CPU: speed and identical cells, on Zheng dataset1
crops and painted 1024 px fields, the bundled model (issue 6, item 2). Each configuration is timed twice,
alternating, and the faster pass kept.

    .venv/bin/python benchmarks/channels_last.py
"""

import time
from pathlib import Path

import numpy as np
import torch

from hemaseg.data.contract import image_to_tensor
from hemaseg.data.formats import open_dataset
from hemaseg.data.io import read_image
from hemaseg.data.synthetic import SynthConfig, write_dataset
from hemaseg.model import default_model, load_model
from hemaseg.predict import PredictConfig, predict_cells


def main() -> None:
    torch.set_num_threads(2)
    src = open_dataset("../shared/data/wbc-zheng2018/dataset1")
    crops = [image_to_tensor(read_image(r.image)) for r in src.refs[:40]]
    d = write_dataset(Path("runs/channels-last-fields"), 3, SynthConfig.wbc_field(1024, 1024), seed=3,
                      annotate={"white_cell": "cell"})
    fields = [image_to_tensor(read_image(p)) for p in sorted((d / "images").glob("*.png"))]
    base, _ = load_model(default_model())
    last, _ = load_model(default_model())
    last = last.to(memory_format=torch.channels_last)
    cfg = PredictConfig()
    for name, images in (("dataset1 crops (120 px)", crops), ("painted fields (1024 px)", fields)):
        runs: dict[str, list] = {"base": [], "last": []}
        for tag, model in (("base", base), ("last", last), ("base", base), ("last", last)):
            predict_cells(model, images[:1], cfg)  # warm-up
            t = time.perf_counter()
            cells = [predict_cells(model, [im], cfg)[0] for im in images]
            runs[tag].append(((time.perf_counter() - t) / len(images), cells))
        (tb, a), (tl, b) = min(runs["base"], key=lambda r: r[0]), min(runs["last"], key=lambda r: r[0])
        same = sum(len(x) == len(y) and np.array_equal(x.boxes, y.boxes) for x, y in zip(a, b))
        ious = [(x.union() & y.union()).sum() / max((x.union() | y.union()).sum(), 1) for x, y in zip(a, b)]
        print(f"{name}: default {tb:.4f} s/image, channels-last {tl:.4f} s/image, x{tb / tl:.2f}; "
              f"same boxes {same}/{len(images)}, lowest union IoU between the two {min(ious):.5f}")


if __name__ == "__main__":
    main()
