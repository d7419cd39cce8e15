"""The default configuration, measured in one run (issue 6): training time and held-out accuracy on the
Zheng et al. 2018 WBC data (dataset1 and dataset2 reported apart), segmentation speed against the
original recipe on the same images in the same process, and peak memory.

    .venv/bin/python benchmarks/default_model.py --zheng ../shared/data/wbc-zheng2018 --work runs/default
    .venv/bin/python benchmarks/default_model.py --model runs/default/outline/best.pt   # skip training

1. Trains with ``hemaseg train --data dataset1 --data dataset2 --data WORK/synthetic-white`` plus
   ``--extra`` options (default: the bundled model's recipe, BUNDLED_RECIPE below), then its outline
   head alone from that run's best.pt (``--outline-extra``, OUTLINE_STAGE), in child processes timed
   together by wall clock; each dataset is split on its own with seed 0 (80/20). ``synthetic-white`` is
   ``--synthetic`` smears of 256x256 px painted by hemaseg.data.synthetic at dataset1's scale, only
   their white cells annotated (as ``cell``, Zheng's name), written first (not timed).
2. Scores the best epoch on each dataset's held-out images (``split.json`` val list) at native
   resolution, each dataset at its measured cell diameter: whole-cell mean IoU and Dice (the union
   of cells per image, the recipe's score), F1 at IoU 0.5, nucleus Dice (and the same for the run's last.pt
   when it is not the best epoch: the held-out images chose that epoch); a model with an outline head
   also without it (Mask R-CNN's own masks), to show what the head adds; and in float32 (``--no-amp``).
3. Times segmentation per image (model call to sparse cells, after one warm-up image) on the same
   held-out images for the trained default (as `hemaseg segment` runs it, and in float32: ``--no-amp``)
   and the original recipe's configuration (float32)
   (maskrcnn_resnet50_fpn, 800 px short side, random weights: 100 detections at a 0.05 score floor,
   which is what a random model returns and what the recipe computed and pasted).
4. Peak resident memory of the training child process and of this process (the timing).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from hemaseg.data.contract import image_to_tensor
from hemaseg.data.dataset import select_refs
from hemaseg.data.formats import open_dataset
from hemaseg.data.io import read_image
from hemaseg.data.synthetic import SynthConfig, write_dataset
from hemaseg.evaluation import evaluate_method
from hemaseg.model import ModelConfig, build_model, data_diameters, read_checkpoint
from hemaseg.predict import ModelMethod, PredictConfig, SegmentConfig, predict_cells

DATASETS = ("dataset1", "dataset2")
BUNDLED_RECIPE = ["--diameter", "80", "--fields", "0.25", "--outline", "16", "--repeat", "0.6", "--repeat", "3", "--repeat", "1",
                  "--epochs", "10"]
# second stage: the outline head alone from the first stage's best.pt, every training crop once per epoch and
# dataset2's five times (its outlines needed more passes than dataset1's), a tenth of them in whole fields whose
# cells keep 10 px of their own crop (a paste's seam 3 px from the outline taught the head the seam:
# docs/benchmarks.md)
OUTLINE_STAGE = ["--diameter", "80", "--fields", "0.1", "--field-rim", "10", "--outline", "16", "--outline-only",
                 "--repeat", "1", "--repeat", "5", "--repeat", "1", "--epochs", "10"]
SYNTH_WHITE = SynthConfig.wbc_field(256, 256, white=(1, 2))


def _time(fn, images) -> float:
    fn(images[0])  # warm-up
    t = time.perf_counter()
    for im in images:
        fn(im)
    return (time.perf_counter() - t) / len(images)


def markdown_table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |" for r in rows]
    return "\n".join(lines)


def score_held_out(model_path: Path, zheng: Path, name: str, diameters: dict[str, float], outline: bool = True,
                   amp: bool = True):
    """Score a trained model on one Zheng dataset's held-out images (its run folder's ``split.json`` val
    list) at native resolution, at the dataset's measured diameter: (row of the report, the method, the refs).
    ``outline=False`` leaves a model's outline head unused (Mask R-CNN's own masks), ``amp=False`` runs
    it in float32 (no bfloat16 on a CPU with AMX), for comparison."""
    source = open_dataset(zheng / name)
    held_out = select_refs(source.refs, source.root, model_path.parent / "split.json", "val")
    cfg = SegmentConfig(diameter=diameters.get(name), amp=amp)
    method = ModelMethod.from_checkpoint(model_path, cfg)
    if not outline:
        method.model.outline = None
    s = evaluate_method(method, source, held_out, cfg, progress=False).summary
    row = {"data": name, "held-out images": s["images"], "mean IoU": s["mean_iou"], "Dice": s["mean_dice"],
           "F1@0.5": s["f1_50"], "nucleus Dice": s.get("nucleus_dice", float("nan"))}
    return row, method, held_out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zheng", type=Path, default=Path("../shared/data/wbc-zheng2018"))
    ap.add_argument("--work", type=Path, default=Path("runs/default"))
    ap.add_argument("--model", type=Path, help="a trained best.pt (its run folder's split.json is used): no training")
    ap.add_argument("--extra", default=" ".join(BUNDLED_RECIPE), help="options added to `hemaseg train`")
    ap.add_argument("--outline-extra", default=" ".join(OUTLINE_STAGE),
                    help="options of a second `hemaseg train` from the first's best.pt ('' : no second stage)")
    ap.add_argument("--synthetic", type=int, default=40, help="synthetic white-cell smears added to training (0: none)")
    ap.add_argument("--timing-images", type=int, default=10, help="held-out images per dataset timed")
    args = ap.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    train_rss = None
    if args.model is None:
        run = args.work / "run"
        data = [args.zheng / d for d in DATASETS]
        if args.synthetic:
            synth = args.work / "synthetic-white"
            write_dataset(synth, args.synthetic, SYNTH_WHITE, seed=0, annotate={"white_cell": "cell"})
            data.append(synth)
        base = [str(Path(sys.executable).with_name("hemaseg")), "train", *(x for d in data for x in ("--data", str(d))),
                "--no-progress"]
        stages = [base + ["--out", str(run), *args.extra.split()]]
        model_path = run / "best.pt"
        if args.outline_extra:
            stages.append(base + ["--out", str(args.work / "outline"), "--weights", str(model_path), *args.outline_extra.split()])
            model_path = args.work / "outline" / "best.pt"
        t0 = time.perf_counter()
        for cmd in stages:
            print("$ " + " ".join(cmd), flush=True)
            ts = time.perf_counter()
            subprocess.run(cmd, check=True)
            print(f"stage done in {(time.perf_counter() - ts) / 60:.1f} min", flush=True)
        train_min = (time.perf_counter() - t0) / 60
        train_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    else:
        model_path, train_min = args.model, None
    ckpt = read_checkpoint(model_path)
    diameters = data_diameters(model_path)
    rows, timing = [], []
    torch.manual_seed(0)  # the same random recipe model in every run
    recipe = build_model(ModelConfig.recipe()).eval()
    outlined = bool(ckpt["config"].get("outline"))
    for name in DATASETS:
        row, method, held_out = score_held_out(model_path, args.zheng, name, diameters)
        rows.append(row)
        if outlined:  # the same model with Mask R-CNN's own masks: what the outline head adds
            plain = score_held_out(model_path, args.zheng, name, diameters, outline=False)[0]
            rows.append({**plain, "data": f"{name}, without the outline head"})
        fp32, fp32_method, _ = score_held_out(model_path, args.zheng, name, diameters, amp=False)
        rows.append({**fp32, "data": f"{name}, float32 (--no-amp)"})
        images = [image_to_tensor(read_image(r.image)) for r in held_out[: args.timing_images]]
        default_s = _time(method, images)
        recipe_s = _time(lambda im: predict_cells(recipe, [im], PredictConfig(score_threshold=0.05, amp=False)), images)
        fp32_s = _time(fp32_method, images)
        timing.append({"data": f"{name} ({tuple(images[0].shape[1:])} px)", "default s/image": default_s,
                       "recipe s/image": recipe_s, "speed-up": recipe_s / default_s, "default --no-amp s/image": fp32_s,
                       "amp speed-up": fp32_s / default_s})
        print(json.dumps(row), json.dumps(timing[-1]), flush=True)
    last = model_path.with_name("last.pt")
    last_epoch = read_checkpoint(last).get("epoch") if model_path.name == "best.pt" and last.is_file() else None
    if last_epoch not in (None, ckpt.get("epoch")):
        for name in DATASETS:  # the held-out images chose the best epoch: the last one is the figure without that choice
            row = score_held_out(last, args.zheng, name, diameters)[0]
            rows.append({**row, "data": f"{name}, last epoch ({last_epoch}, not selected)"})

    print(f"\nmodel {model_path} ({model_path.stat().st_size / 1e6:.1f} MB), best epoch {ckpt.get('epoch')}"
          + (f", training {train_min:.1f} min wall, peak RSS {train_rss:.2f} GB" if train_min is not None else "")
          + f"; data diameters {diameters}\n")
    print(markdown_table(rows) + "\n")
    print(markdown_table(timing))
    print(f"\npeak RSS of this process (evaluation and timing): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
