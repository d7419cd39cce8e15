"""Several training recipes side by side on the same split, scored the same way (issue 6 ablations).

    .venv/bin/python benchmarks/ablation.py --work runs/ablation \\
        --run "bundled=--diameter 80 --mask-roi 28 --mask-channels 64 --fields 0.25 --epochs 10" \\
        --run "native=--mask-roi 28 --mask-channels 64 --fields 0.25 --epochs 10"

Each ``--run NAME=OPTIONS`` is one ``hemaseg train`` on dataset1 + dataset2 (``--datasets``; each split
with seed 0, 80/20, as ``default_model.py``) + ``--synthetic`` painted white-cell smears; the pseudo-option
``--no-synthetic`` in OPTIONS leaves the smears out. ``NAME=STAGE1 || STAGE2`` trains a second stage after
the first, from its best.pt (``--weights``, out ``NAME/outline``: e.g. the outline head alone,
``default_model.OUTLINE_STAGE``); the run's wall time is both stages' and its scores are the second's.
``--parallel K`` trains K runs at once (on a GPU
machine; on a 2-core CPU keep 1), each with ``cores / K`` threads. A run still training at
``--deadline`` seconds is stopped and its best epoch so far is scored (the table says so). Every
finished or stopped run is scored on each dataset's held-out images at native resolution, at its
measured cell diameter (``default_model.score_held_out``); the table gives training wall time, epochs
done and the best epoch.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from default_model import DATASETS, SYNTH_WHITE, markdown_table, score_held_out

from hemaseg.data.synthetic import write_dataset
from hemaseg.model import data_diameters, read_checkpoint


def _command(name: str, options: str, data: list[Path], synth: Path | None, work: Path, stage: int = 1) -> list[str]:
    opts = options.split("||")[stage - 1].split()
    out = work / name
    if stage == 2:
        opts += ["--weights", str(out / "best.pt")]
        out = out / "outline"
    paths = list(data)
    if "--no-synthetic" in opts:
        opts.remove("--no-synthetic")
    elif synth is not None:
        paths.append(synth)
    return [sys.executable, "-m", "hemaseg", "train", *(x for d in paths for x in ("--data", str(d))),
            "--out", str(out), "--no-progress", *opts]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zheng", type=Path, default=Path("../shared/data/wbc-zheng2018"))
    ap.add_argument("--work", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--run", action="append", required=True, metavar="NAME=OPTIONS")
    ap.add_argument("--synthetic", type=int, default=40, help="painted white-cell smears written for the runs (0: none)")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS, help="Zheng datasets trained and scored")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=None, help="seconds after which unfinished runs are stopped")
    ap.add_argument("--results", type=Path, help="also write the table and the per-epoch rows here (a folder)")
    args = ap.parse_args()

    runs = dict(r.split("=", 1) for r in args.run)
    args.work.mkdir(parents=True, exist_ok=True)
    synth = None
    if args.synthetic:
        synth = args.work / "synthetic-white"
        if not synth.exists():
            write_dataset(synth, args.synthetic, SYNTH_WHITE, seed=0, annotate={"white_cell": "cell"})
    threads = max(1, (os.cpu_count() or 2) // args.parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    pending = list(runs)
    live: dict[str, tuple[subprocess.Popen, float, int]] = {}  # name -> (process, start, stage)
    wall: dict[str, float] = {}
    stopped: set[str] = set()
    t_start = time.perf_counter()
    data = [args.zheng / d for d in args.datasets]

    def start(name: str, stage: int, t0: float) -> None:
        cmd = _command(name, runs[name], data, synth, args.work, stage)
        print("$ " + " ".join(cmd), flush=True)
        log = open(args.work / f"{name}.log", "a" if stage == 2 else "w")  # noqa: SIM115 - closed with the process
        live[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), t0, stage)

    while pending or live:
        while pending and len(live) < args.parallel:
            start(pending.pop(0), 1, time.perf_counter())
        time.sleep(2)
        late = args.deadline is not None and time.perf_counter() - t_start > args.deadline
        for name, (proc, t0, stage) in list(live.items()):
            if late and proc.poll() is None:
                proc.kill()
                proc.wait()
                stopped.add(name)
            if proc.poll() is not None:
                wall[name] = time.perf_counter() - t0
                del live[name]
                print(f"{name}: stage {stage} exit {proc.returncode} after {wall[name] / 60:.1f} min", flush=True)
                if stage == 1 and "||" in runs[name] and proc.returncode == 0 and not late:
                    start(name, 2, t0)
        if late:
            stopped.update(pending)
            pending.clear()

    torch.set_num_threads(os.cpu_count() or 2)
    rows, epochs = [], {}
    for name in runs:
        best = args.work / name / ("outline/best.pt" if "||" in runs[name] else "best.pt")
        if not best.is_file():
            print(f"{name}: no best.pt (see {args.work / name}.log)", flush=True)
            continue
        metrics = best.parent / "metrics.csv"
        epochs[name] = list(csv.DictReader(metrics.open())) if metrics.is_file() else []
        diameters = data_diameters(best)
        row = {"run": name, "train min": wall.get(name, float("nan")) / 60,
               "epochs done": len(epochs[name]), "best epoch": read_checkpoint(best).get("epoch")}
        for d in args.datasets:
            r, _, _ = score_held_out(best, args.zheng, d, diameters)
            row[f"{d} IoU"], row[f"{d} F1"] = r["mean IoU"], r["F1@0.5"]
        row["stopped"] = "yes" if name in stopped else "no"
        rows.append(row)
        print(json.dumps(row), flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    text = f"{device}; {args.parallel} runs at a time\n\n" + (markdown_table(rows) if rows else "(no run finished)")
    text += "\n\nOptions:\n" + "\n".join(f"- {n}: {o}" for n, o in runs.items())
    print("\n" + text)
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "ablation.md").write_text(text + "\n")
        (args.results / "epochs.json").write_text(json.dumps(epochs, indent=1))


if __name__ == "__main__":
    main()
