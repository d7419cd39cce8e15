"""Real smears of every source, held out, as a new user runs them (issue 17): white-cell precision, recall
and F1 at IoU 0.5, mean matched IoU, whole-image IoU, seconds per image - each with a bootstrap 95%
interval over images - for the default call (no options) and with the true white-cell diameter, for the
model and the previous bundled model in the same run; the scale estimate per source; the speed against
the original recipe's configuration.

    git show 2f61b02:src/hemaseg/models/default.pt > runs/previous.pt     # the bundled model before issue 17
    .venv/bin/python benchmarks/real_fields.py --baseline runs/previous.pt --out runs/real_fields

Ground truth (held-out images: benchmarks/real_sources.py):

* bccd (58 fields 640x480), dataset1 (60 crops 120x120), dataset2 (10 crops 300x300): white-cell masks;
  matching by mask IoU, whole-image IoU = IoU of the union of cells (the recipe's score);
* pbc (1,100 CellaVision crops 360x363 of pbc/val): YOLO boxes of every nucleated cell (red cells and
  platelets aside); matching by box IoU (there are no masks), no outline figures;
* chula (62 fields 640x480): red cells only are annotated (points): the white cells found per field are
  listed for what they are (most fields hold none or one), not scored.

"True diameter": ``--diameter`` = the median white-cell diameter of the source's held-out truth (mask
equivalent diameter; for pbc the boxes' sqrt(w h)). The previous model has no scale estimate: its
default call uses the images as they are (as before issue 17).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from real_sources import DATA, PIXEL_SIZE, folder, held_out, median_box_diameter, pbc_classes, pbc_white_boxes  # noqa: E402

from hemaseg.data.boxes import box_iou  # noqa: E402
from hemaseg.data.contract import image_to_tensor  # noqa: E402
from hemaseg.data.dataset import cell_diameter  # noqa: E402
from hemaseg.data.formats import load_sample, open_dataset  # noqa: E402
from hemaseg.data.io import read_image  # noqa: E402
from hemaseg.evaluation import evaluate_method  # noqa: E402
from hemaseg.metrics import bootstrap_interval, matched_ious  # noqa: E402
from hemaseg.model import ModelConfig, build_model, default_model  # noqa: E402
from hemaseg.predict import ModelMethod, PredictConfig, SegmentConfig, predict_cells, segment_image  # noqa: E402
from hemaseg.scale import bundled_scale_net, estimate_scale  # noqa: E402

MASK_SOURCES = ("bccd", "dataset1", "dataset2")


def mask_rows(method, cfg: SegmentConfig, name: str, data: Path, limit: int | None = None) -> list[dict]:
    """Per held-out image of a source with masks: n_true, n_pred, tp, matched IoU sum, image IoU, seconds."""
    source = open_dataset(folder(name, data))
    want = {str(p) for p in held_out(name, data)[:limit]}
    refs = [r for r in source.refs if str(r.image) in want]
    ev = evaluate_method(method, source, refs, cfg, progress=False)
    return [{"n_true": r["n_true"], "n_pred": r["n_pred"], "tp": r["tp_50"], "iou_sum": r["matched_iou_sum_50"],
             "image_iou": r["iou"], "seconds": r["seconds"]} for r in ev.per_image]


def pbc_rows(method, cfg: SegmentConfig, data: Path, limit: int | None) -> list[dict]:
    """Per held-out PBC crop: the same counts, by box IoU (no masks in the truth)."""
    classes = pbc_classes(data)
    rows = []
    for path in held_out("pbc", data)[:limit]:
        image = image_to_tensor(read_image(path))
        truth = pbc_white_boxes(path, image.shape[1], image.shape[2], classes)
        t0 = time.perf_counter()
        cells, _ = segment_image(method, image, cfg)
        seconds = time.perf_counter() - t0
        matched = matched_ious(box_iou(truth.xyxy, cells.boxes), 0.5)
        rows.append({"n_true": len(truth), "n_pred": len(cells), "tp": len(matched), "iou_sum": float(matched.sum()),
                     "image_iou": float("nan"), "seconds": seconds})
    return rows


def summary(rows: list[dict]) -> dict:
    """Pooled precision, recall, F1 at IoU 0.5, mean matched IoU, mean image IoU, s/image, each with a
    bootstrap 95% interval over images."""
    cols = {k: np.array([r[k] for r in rows], np.float64) for k in rows[0]}

    def stats(i):
        tp, nt, npred = cols["tp"][i].sum(), cols["n_true"][i].sum(), cols["n_pred"][i].sum()
        return {"precision": tp / npred if npred else 1.0, "recall": tp / nt if nt else 1.0,
                "f1": 2 * tp / (nt + npred) if nt + npred else 1.0,
                "matched_iou": cols["iou_sum"][i].sum() / tp if tp else float("nan"),
                "image_iou": float(np.mean(cols["image_iou"][i])), "s_per_image": float(np.mean(cols["seconds"][i]))}

    n = len(rows)
    out = {"images": n, **stats(np.arange(n))}
    for key in ("precision", "recall", "f1", "matched_iou", "image_iou"):
        out[f"{key}_ci"] = bootstrap_interval(n, lambda i, k=key: stats(i)[k])
    return out


def true_diameter(name: str, data: Path) -> float:
    """Median white-cell diameter (px) of a source's held-out truth."""
    if name == "pbc":
        classes = pbc_classes(data)
        return median_box_diameter([pbc_white_boxes(p, 363, 360, classes) for p in held_out("pbc", data)])
    source = open_dataset(folder(name, data))
    want = {str(p) for p in held_out(name, data)}
    return cell_diameter(source, [r for r in source.refs if str(r.image) in want])


def chula_white(method, cfg: SegmentConfig, data: Path, limit: int | None) -> dict:
    counts = []
    for path in held_out("chula", data)[:limit]:
        image = read_image(path)
        counts.append(len(segment_image(method, image, cfg)[0]))
    return {"fields": len(counts), "white_cells_per_field": float(np.mean(counts)), "fields_with_none": int(np.sum(np.array(counts) == 0)),
            "max_in_a_field": int(max(counts))}


def scale_table(data: Path) -> list[dict]:
    net = bundled_scale_net()
    rows = []
    for name in ("bccd", "pbc", "chula", "dataset1", "dataset2"):
        files = held_out(name, data)
        t0 = time.perf_counter()
        est = [estimate_scale(net, read_image(p)) for p in files]
        err = np.array([abs(e.pixel_size / PIXEL_SIZE[name] - 1) if e.pixel_size else np.inf for e in est])
        rows.append({"source": name, "images": len(files), "true um/px": PIXEL_SIZE[name],
                     "median estimate": float(np.median([e.pixel_size or np.nan for e in est])),
                     "median error": float(np.median(err)), "90th pct error": float(np.percentile(err, 90)),
                     "within 10%": float(np.mean(err <= 0.1)), "trusted": float(np.mean([e.confident for e in est])),
                     "s/image": (time.perf_counter() - t0) / len(files)})
    return rows


def outline_tolerance(data: Path, shifts=(1, 2, 3, 5)) -> list[dict]:
    """How much IoU an outline loses when it lies ``r`` px off the truth all round (the truth against itself
    grown and shrunk by r px, mean of the two): the ceiling a hand-drawn outline's wobble sets on matched IoU."""
    from scipy import ndimage

    rows = []
    for name in MASK_SOURCES:
        source = open_dataset(folder(name, data))
        want = {str(p) for p in held_out(name, data)}
        cells = [m for r in source.refs if str(r.image) in want for m in load_sample(r, source.classes)[1]["masks"].numpy().astype(bool)]
        row = {"source": name, "cells": len(cells)}
        for r in shifts:
            ball = ndimage.generate_binary_structure(2, 1)
            ious = []
            for m in cells:
                grown = ndimage.binary_dilation(m, ball, iterations=r)
                shrunk = ndimage.binary_erosion(m, ball, iterations=r)
                ious.append((m.sum() / grown.sum() + shrunk.sum() / m.sum()) / 2)
            row[f"{r} px off"] = float(np.mean(ious))
        rows.append(row)
    return rows


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return f"{v[0]:.3f}-{v[1]:.3f}"
    return str(v)


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                     + ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows])


def speed(method, data: Path, n: int) -> list[dict]:
    """s/image of the default call (scale estimate included) against the original recipe's configuration
    (maskrcnn_resnet50_fpn, 800 px short side, random weights, 0.05 score floor) on the same images."""
    torch.manual_seed(0)
    recipe = build_model(ModelConfig.recipe()).eval()
    cfg = SegmentConfig()
    rows = []
    for name in ("dataset1", "dataset2", "bccd"):
        images = [image_to_tensor(read_image(p)) for p in held_out(name, data)[:n]]

        def ours(im):
            return segment_image(method, im, cfg)

        def theirs(im):
            return predict_cells(recipe, [im], PredictConfig(score_threshold=0.05, amp=False))

        times = {}
        for label, fn in (("default", ours), ("recipe", theirs)):
            fn(images[0])
            t = time.perf_counter()
            for im in images:
                fn(im)
            times[label] = (time.perf_counter() - t) / len(images)
        rows.append({"data": f"{name} {tuple(images[0].shape[1:])}", "default s/image": times["default"],
                     "recipe s/image": times["recipe"], "speed-up": times["recipe"] / times["default"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, help="model to measure (default: the bundled model)")
    ap.add_argument("--baseline", type=Path, help="the previous bundled model, measured in the same run")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--limit", type=int, default=None, help="score only the first N held-out images of each source (a quick look)")
    ap.add_argument("--timing-images", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("runs/real_fields"))
    ap.add_argument("--speed-only", action="store_true", help="only the speed table, for the model and the baseline (run it idle)")
    args = ap.parse_args()
    if args.speed_only:
        for path in [args.model or default_model()] + ([args.baseline] if args.baseline else []):
            print(f"{path}:\n" + table(speed(ModelMethod.from_checkpoint(path, SegmentConfig()), args.data, args.timing_images)))
        return
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    models = [("model", args.model or default_model())] + ([("previous", args.baseline)] if args.baseline else [])
    sources = ("bccd", "pbc", "dataset1", "dataset2")
    diameters = {name: true_diameter(name, args.data) for name in sources}
    print("true white-cell diameters (px):", json.dumps({k: round(v, 1) for k, v in diameters.items()}), flush=True)
    results = []
    for label, path in models:
        for mode in ("default", "true diameter"):
            for name in sources:
                cfg = SegmentConfig(diameter=diameters[name]) if mode == "true diameter" else SegmentConfig()
                method = ModelMethod.from_checkpoint(path, cfg)
                t0 = time.perf_counter()
                rows = (pbc_rows(method, cfg, args.data, args.limit) if name == "pbc"
                        else mask_rows(method, cfg, name, args.data, args.limit))
                s = summary(rows)
                results.append({"model": label, "call": mode, "source": name, **s})
                print(json.dumps(results[-1]), f"({time.perf_counter() - t0:.0f}s)", flush=True)
    chula = [{"model": label, **chula_white(ModelMethod.from_checkpoint(path, SegmentConfig()), SegmentConfig(), args.data, args.limit)}
             for label, path in models]
    scales = scale_table(args.data)
    tolerance = outline_tolerance(args.data)
    timing = speed(ModelMethod.from_checkpoint(models[0][1], SegmentConfig()), args.data, args.timing_images)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"segmentation": results, "chula": chula, "scale": scales,
                                                       "speed": timing, "diameters": diameters,
                                                       "outline_tolerance": tolerance}, indent=2))
    cols = ["model", "call", "source", "images", "precision", "precision_ci", "recall", "recall_ci", "f1", "f1_ci",
            "matched_iou", "matched_iou_ci", "image_iou", "image_iou_ci", "s_per_image"]
    print("\n" + table([{k: r[k] for k in cols} for r in results]))
    print("\nwhite cells found in held-out Chula fields (red cells annotated only; most fields hold no white cell):\n" + table(chula))
    print("\nscale estimate (bundled scale model) on held-out images:\n" + table(scales))
    print("\nIoU of the truth against itself r px off all round (the ceiling outline wobble sets):\n" + table(tolerance))
    print("\nspeed, default call (scale estimate included) against the original recipe's configuration:\n" + table(timing))


if __name__ == "__main__":
    main()
