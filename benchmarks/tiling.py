"""Whole fields, measured: tiled vs untiled cells on a synthetic 2048x2048 smear, duplicates across
seams, and peak memory and time of `hemaseg segment` on an 8000x8000 field.

    .venv/bin/python benchmarks/tiling.py [--model RUN/best.pt] [--work runs/tiling]

Without --model it first trains the demo's configuration on synthetic smears (48 images of 160 px,
12 epochs, a few minutes). The 2048 px field has about 0.2 cells per 1000 px^2 (814 cells; about a
seventh of the demo images' density). The 8000 px field is a 4 x 4 mosaic of such fields; `segment` runs in a child process whose peak RSS is read from the OS
(through a small wrapper process, so that this process's own memory is not counted).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hemaseg.data.io import write_image
from hemaseg.data.synthetic import SynthConfig, generate, write_dataset
from hemaseg.metrics import MatchCounter
from hemaseg.predict import ModelMethod, SegmentConfig, run_method
from hemaseg.cells import Cells, iou_matrix_cells
from hemaseg.train import TrainConfig, train


def field(size: int, seed: int):
    """A synthetic smear field of ``size`` px: 6 red cells, 0.4 white cells, 0.8 platelets per 192x192 px."""
    return generate(np.random.default_rng(seed), SynthConfig.field(size, size, red=6, white=0.4, platelets=0.8))


def truth_cells(sample) -> Cells:
    ids = np.unique(sample.labels)
    ids = ids[ids > 0]
    h, w = sample.labels.shape
    return Cells.from_result({"masks": sample.labels[None] == ids[:, None, None], "labels": sample.classes[ids - 1],
                              "scores": np.ones(len(ids))}, h, w)


def f1(a: Cells, b: Cells) -> tuple[float, float]:
    counter = MatchCounter((0.5,))
    counter.add(iou_matrix_cells(a, b))
    m = counter.result(0.5)
    return m.f1, m.mean_matched_iou


def duplicates(c: Cells) -> int:
    iou = iou_matrix_cells(c, c)
    np.fill_diagonal(iou, 0)
    same = c.labels[:, None] == c.labels[None, :]
    return int(((iou >= 0.5) & same).sum() // 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--work", type=Path, default=Path("runs/tiling"))
    ap.add_argument("--size", type=int, default=2048, help="side of the tiled-vs-untiled field")
    ap.add_argument("--big", type=int, default=8000, help="side of the field for the memory measurement (0: skip it)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = args.work / "model" / "best.pt"
        if not model.is_file():
            data = write_dataset(args.work / "synth", 48, SynthConfig(height=160, width=160), seed=0)
            train(TrainConfig(data=str(data), out=str(model.parent), epochs=12, warmup_steps=30), progress=False)
    method = ModelMethod.from_checkpoint(model)
    print(f"model {model}\n")

    sample = field(args.size, seed=1)
    truth = truth_cells(sample)
    runs, seconds = {}, {}
    for name, cfg in (("untiled", SegmentConfig(tile=4096)), ("tiles 1024 / overlap 256", SegmentConfig()),
                      ("tiles 512 / overlap 128", SegmentConfig(tile=512, overlap=128))):
        t0 = time.perf_counter()
        runs[name] = run_method(method, sample.image, cfg)
        seconds[name] = time.perf_counter() - t0
    print(f"{args.size}x{args.size} synthetic field, {len(truth)} true cells\n")
    print("| run | cells | s | F1@0.5 vs untiled | mean matched IoU | duplicate pairs (IoU >= 0.5) | F1@0.5 vs truth |")
    print("|---|---|---|---|---|---|---|")
    base = runs["untiled"]
    for name, c in runs.items():
        fa, ia = f1(base, c)
        print(f"| {name} | {len(c)} | {seconds[name]:.1f} | {fa:.4f} | {ia:.4f} | {duplicates(c)} | {f1(truth, c)[0]:.4f} |")

    big = args.big
    if not big:
        return
    reps = -(-big // args.size)
    mosaic = np.concatenate([np.concatenate([field(args.size, seed=10 + 4 * r + c).image for c in range(reps)], axis=1)
                             for r in range(reps)], axis=0)[:big, :big]
    path = write_image(args.work / f"field{big}.png", mosaic)
    del mosaic
    out = args.work / f"segment{big}"
    # a small wrapper process launches segment and reads its peak RSS: a child forked straight from this
    # (large) process would count this process's pages in its own peak before it execs
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.stdout + r.stderr)")
    t1 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "hemaseg", "segment", str(path),
                           "--model", str(model), "--out", str(out), "--no-progress"], capture_output=True, text=True)
    wall = time.perf_counter() - t1
    head, _, output = proc.stdout.partition("\n")
    returncode, peak_kb = (int(v) for v in head.split())
    peak_mb = peak_kb / 1024
    print(f"\n`hemaseg segment` on a {big}x{big} field ({path.stat().st_size / 1e6:.0f} MB PNG, "
          f"{big * big * 3 / 1e6:.0f} MB as RGB): exit {returncode}, {wall:.0f} s, peak RSS {peak_mb:.0f} MB")
    print(output.strip().splitlines()[-1] if output.strip() else proc.stderr[-2000:])


if __name__ == "__main__":
    main()
