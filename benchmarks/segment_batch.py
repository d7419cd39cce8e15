"""Batched segmentation (``SegmentConfig.batch``, ``hemaseg segment --batch``): the time of the whole
``segment_files`` call per image (reading, model, measuring, writing every file) with batches of 1, 4 and
8 images, on Zheng crops with the bundled model, and whether the results are the same (issue 6, item 2).
Each batch size is timed twice, alternating, and the faster pass kept.

    .venv/bin/python benchmarks/segment_batch.py [--zheng ../shared/data/wbc-zheng2018] [--work runs/segment-batch]

Without the Zheng folders it segments painted 120x120 and 300x300 smears (hemaseg.data.synthetic).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from hemaseg.data.formats import list_images
from hemaseg.data.io import read_label_image
from hemaseg.data.synthetic import SynthConfig, write_dataset
from hemaseg.model import default_model
from hemaseg.predict import ModelMethod, SegmentConfig
from hemaseg.segment import segment_files

BATCHES = (1, 4, 8)


def image_sets(zheng: Path, work: Path) -> dict[str, tuple[list[Path], float | None]]:
    """name -> (image files, white-cell diameter to give segment)."""
    if (zheng / "dataset1").is_dir():
        return {"dataset1 (120x120)": (sorted((zheng / "dataset1").glob("*.bmp"))[:80], None),
                "dataset2 (300x300)": (sorted((zheng / "dataset2").glob("*.bmp"))[:40], 164.0)}
    out = {}
    for name, size, n in (("painted 120x120", 120, 80), ("painted 300x300", 300, 40)):
        d = write_dataset(work / f"smears-{size}", n, SynthConfig.wbc_field(size, size, white=(1, 1)), seed=1)
        out[name] = (list_images([d / "images"]), None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zheng", type=Path, default=Path("../shared/data/wbc-zheng2018"))
    ap.add_argument("--work", type=Path, default=Path("runs/segment-batch"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    rows = []
    for name, (files, diameter) in image_sets(args.zheng, args.work).items():
        method = ModelMethod.from_checkpoint(default_model(), SegmentConfig(diameter=diameter))
        best: dict[int, float] = {}
        for _ in range(2):
            for b in BATCHES:
                cfg = SegmentConfig(diameter=diameter, batch=b)
                out = args.work / f"{name.split()[0]}-b{b}"
                segment_files(files[:2], method, out, cfg, progress=False, log=lambda s: None, overwrite=True)  # warm-up
                t = time.perf_counter()
                segment_files(files, method, out, cfg, progress=False, log=lambda s: None, overwrite=True)
                best[b] = min(best.get(b, np.inf), (time.perf_counter() - t) / len(files))
        ref = args.work / f"{name.split()[0]}-b1"
        same = all(np.array_equal(read_label_image(ref / f"{p.stem}_labels.png"),
                                  read_label_image(args.work / f"{name.split()[0]}-b{b}" / f"{p.stem}_labels.png"))
                   for b in BATCHES[1:] for p in files)
        for b in BATCHES:
            rows.append({"images": name, "n": len(files), "batch": b, "s/image": round(best[b], 4),
                         "vs batch 1": round(best[1] / best[b], 2), "same label images": same})
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
