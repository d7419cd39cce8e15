"""White-cell types across labs (issue 18): the cell-image classifier (hemaseg.celltypes) per source, held
out, on the cells the default ``segment`` call finds; the cross-lab rows (trained without a source, tested
on it); stain matching against none; the old linear classifier in the same run; time per cell.

    git show 6bb6b48:src/hemaseg/models/wbc_types.json > runs/linear.json        # the classifier before issue 18
    .venv/bin/python benchmarks/wbc_types.py crops                               # labelled cells of every source (~2 min)
    .venv/bin/python benchmarks/wbc_types.py train --name lite0-12 --epochs 12   # = the bundled recipe (~28 min on 2 cores)
    .venv/bin/python benchmarks/wbc_types.py views --model lite0-12 --name lite0-12-v4 --views 4
    .venv/bin/python benchmarks/wbc_types.py views --model lite0-12 --name lite0-12-v8 --views 8
    .venv/bin/python benchmarks/wbc_types.py train --name bundled --arch resnet18 --lr 2e-3 --epochs 12   # the ResNet-18
    .venv/bin/python benchmarks/wbc_types.py views --model bundled --name bundled-v8 --views 8             # shipped before
    .venv/bin/python benchmarks/wbc_types.py train --name lite-no-bccd --without bccd --epochs 5           # cross-lab rows
    .venv/bin/python benchmarks/wbc_types.py train --name lite-no-dataset2 --without dataset2 --epochs 5
    .venv/bin/python benchmarks/wbc_types.py train --name lite-no-pbc --without pbc --epochs 40
    .venv/bin/python benchmarks/wbc_types.py train --name no-bccd --without bccd --arch resnet18 --lr 2e-3 --epochs 5
    .venv/bin/python benchmarks/wbc_types.py train --name no-bccd-nostain --without bccd --stain none --arch resnet18 --lr 2e-3 --epochs 5
    .venv/bin/python benchmarks/wbc_types.py segment --baseline runs/linear.json  # held-out images, default call (~8 min)
    .venv/bin/python benchmarks/wbc_types.py report                              # tables + figures -> runs/wbc_types/

Sources (../shared/data, read from there; labels and held-out images as benchmarks/real_sources.py):

* pbc: trained on ``pbc/train`` (4,400 CellaVision crops, 11 expert types), tested on ``pbc/val`` (1,100; the
  typed cell is the box of the crop's type nearest its centre - the few crops without one are left out);
* bccd: ``bccd-wbc`` fields (one type per field; fields with two types left out), 20% held out (seed 0);
* dataset1 / dataset2: Zheng et al. crops (5 types, labels not expert-checked), 20% held out (seed 0).

"Predicted cells": each held-out image is segmented by the default call (bundled model, scale estimate);
the found cell that matches the labelled cell (mask IoU >= 0.5; for PBC box IoU >= 0.5 with the centred
cell's box) is typed at the scale the segmentation used; labelled cells not found are counted as missed,
not typed. "True cells": the labelled cell itself (its mask's centre, or the crop's centre for PBC) at
the source's measured pixel size - what the training saw.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from real_sources import DATA, PIXEL_SIZE, held_out, pbc_classes  # noqa: E402

from hemaseg.celltypes import (FIVE_PART, TYPES, CellTypeClassifier, CropSet, TypeConfig, TypeSource,  # noqa: E402
                               TypeTrainConfig, fit_celltypes, reliability, source_crops, to_level, type_scores)

RUNS = Path(__file__).resolve().parents[1] / "runs" / "wbc_types"
SOURCES = {
    "pbc": TypeSource(DATA / "pbc" / "train", DATA / "pbc" / "train" / "types.csv", PIXEL_SIZE["pbc"], 0.0),
    "bccd": TypeSource(DATA / "bccd-wbc", DATA / "bccd-wbc" / "types.csv", PIXEL_SIZE["bccd"], 0.2),
    "dataset1": TypeSource(DATA / "wbc-zheng2018" / "dataset1", DATA / "wbc-zheng2018" / "classes_dataset1.csv", PIXEL_SIZE["dataset1"], 0.2),
    "dataset2": TypeSource(DATA / "wbc-zheng2018" / "dataset2", DATA / "wbc-zheng2018" / "classes_dataset2.csv", PIXEL_SIZE["dataset2"], 0.2),
}
PBC_VAL = TypeSource(DATA / "pbc" / "val", DATA / "pbc" / "val" / "types.csv", PIXEL_SIZE["pbc"], 0.0)


def save_set(path: Path, s: CropSet) -> None:
    np.savez(path, crops=s.crops, labels=np.array(s.labels), sources=np.array(s.sources), names=np.array(s.names))


def load_set(path: Path) -> CropSet:
    z = np.load(path)
    return CropSet(z["crops"], z["labels"].tolist(), z["sources"].tolist(), z["names"].tolist())


def geometry(cfg: TypeConfig) -> str:
    """File-name tag of a crop geometry: "" for the first one (0.25 um/px, 128 px: the crops of the models
    trained before 2026-12-02), else "@PX-CONTEXT"."""
    return "" if (cfg.pixel_size, cfg.context) == (0.25, 128) else f"@{cfg.pixel_size:g}-{cfg.context}"


def crop_config(args) -> TypeConfig:
    d = TypeConfig()
    return TypeConfig(pixel_size=args.pixel_size or d.pixel_size, context=args.context or d.context, size=args.size or d.size)


def cmd_crops(args) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    cfg = crop_config(args)
    for name, src in SOURCES.items():
        train, held = source_crops(src, cfg, progress=True)
        if name == "pbc":
            held, _ = source_crops(PBC_VAL, cfg, progress=True)
            held.sources = ["pbc"] * len(held)
        train.sources, held.sources = [name] * len(train), [name] * len(held)
        save_set(RUNS / f"train_{name}{geometry(cfg)}.npz", train)
        save_set(RUNS / f"held_{name}{geometry(cfg)}.npz", held)
        print(f"{name}: {len(train)} training cells, {len(held)} held out")


def training_set(without: list[str], cfg: TypeConfig = TypeConfig()) -> CropSet:
    """Every source's training cells (in :data:`SOURCES` order, as ``hemaseg fit-classifier`` joins them)
    cropped as ``cfg`` (``crops`` with the same geometry options)."""
    return CropSet.join([load_set(RUNS / f"train_{n}{geometry(cfg)}.npz") for n in SOURCES if n not in without])


def cmd_train(args) -> None:
    cfg = dataclasses.replace(crop_config(args), stain=args.stain, arch=args.arch)
    tcfg = TypeTrainConfig(epochs=args.epochs, seed=args.seed, lr=args.lr,
                           pretrained=not args.random_init and args.arch == "efficientnet_lite0")
    clf = fit_celltypes(training_set(args.without, cfg), cfg, tcfg)
    clf.report["without"] = args.without
    clf.save(RUNS / f"{args.name}.pt")
    print(f"-> {RUNS / args.name}.pt")


def cmd_views(args) -> None:
    """A trained classifier seeing each cell in ``--views`` views, recalibrated on its own calibration cells."""
    from hemaseg.celltypes import calibrate, split_crops

    clf = CellTypeClassifier.load(RUNS / f"{args.model}.pt")
    tcfg = TypeTrainConfig(**clf.report["train_config"])
    _, cal = split_crops(training_set(clf.report.get("without", []), clf.cfg), tcfg.calibration, tcfg.seed)
    clf.cfg = clf.net.cfg = dataclasses.replace(clf.cfg, views=args.views)
    calibrate(clf, cal, tcfg).save(RUNS / f"{args.name}.pt")
    print(f"{args.model} seeing {args.views} views: temperature {clf.cfg.temperature}, threshold {clf.cfg.threshold} "
          f"-> {RUNS / args.name}.pt")


# ---------------------------------------------------------------------------- predicted cells
def _truth_cells(name: str, path: Path, image: np.ndarray, cell_type: str):
    """The labelled cells of a held-out image: (XYXY boxes, masks or None). PBC: the box of the crop's
    expert type nearest the centre (none when the crop has no box of that type: a few crops lack it)."""
    from hemaseg.data.boxes import read_yolo
    from hemaseg.data.io import read_image
    from skimage.measure import label, regionprops

    if name == "pbc":
        boxes = read_yolo(path.parent / "labels" / f"{path.stem}.txt", pbc_classes(), image.shape[0], image.shape[1])
        keep = [i for i, n in enumerate(boxes.names) if n == cell_type]
        xyxy = boxes.xyxy[keep]
        if not len(xyxy):
            return np.zeros((0, 4)), None
        c = np.array([(image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2])
        centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
        return xyxy[[int(np.argmin(((centre - c) ** 2).sum(1)))]], None  # the cell the crop is centred on
    mask = read_image(path.with_suffix(".png"))
    lab = label((mask if mask.ndim == 2 else mask[..., 0]) != 0)
    parts = sorted(regionprops(lab), key=lambda r: -r.area)
    parts = [r for r in parts if r.area >= 0.2 * parts[0].area] if parts else []
    boxes = np.array([[r.bbox[1], r.bbox[0], r.bbox[3], r.bbox[2]] for r in parts], dtype=float).reshape(-1, 4)
    return boxes, [lab == r.label for r in parts]


def cmd_segment(args) -> None:
    """Held-out images through the default call (with the old linear classifier, the baseline): per
    labelled cell, the matched found cell's box, the scale used and the baseline's type."""
    from hemaseg.classify import LinearClassifier, cell_features, read_type_labels, type_of
    from hemaseg.data.boxes import box_iou
    from hemaseg.data.contract import image_to_rgb8, image_to_tensor
    from hemaseg.data.io import read_image
    from hemaseg.model import default_model
    from hemaseg.nuclei import cell_nuclei
    from hemaseg.predict import ModelMethod, SegmentConfig, segment_image
    from hemaseg.data.contract import crop_image

    linear = LinearClassifier.load(args.baseline) if args.baseline else None
    cfg = SegmentConfig()
    method = ModelMethod.from_checkpoint(default_model(), cfg)
    done = RUNS / "predicted.json"
    out = json.loads(done.read_text()) if done.is_file() and not args.again else {}
    for name, src in SOURCES.items():
        if name in out:
            print(f"{name}: kept from {done} (--again to redo)")
            continue
        files = held_out(name)
        labels = read_type_labels(PBC_VAL.labels if name == "pbc" else src.labels)
        rows = []
        t0 = time.time()
        for path in files[: args.limit]:
            t = type_of(labels, path.stem)
            if not t or "|" in t:
                continue
            raw = read_image(path)
            rgb = image_to_rgb8(raw)
            boxes, masks = _truth_cells(name, path, rgb, t)
            if not len(boxes):
                continue  # (a PBC crop without a box of its type)
            cells, scale = segment_image(method, image_to_tensor(raw), cfg)
            names = [method.classes[i - 1] for i in cells.labels.tolist()]
            nuclei = cell_nuclei(raw, cells, names, learned=True) if len(cells) else []
            for k, box in enumerate(boxes):
                row = {"image": str(path), "cell": k, "label": t, "true_box": [float(v) for v in box],
                       "pixel_size": method.pixel_size * scale.resize, "found": False}
                if len(cells):
                    if masks is not None:
                        dense = np.asarray(cells.dense()).astype(bool)
                        ious = (dense & masks[k]).sum((1, 2)) / np.maximum((dense | masks[k]).sum((1, 2)), 1)
                    else:
                        ious = box_iou(box[None], cells.boxes)[0]
                    j = int(np.argmax(ious))
                    if ious[j] >= 0.5:
                        b = cells.boxes[j]
                        row.update(found=True, box=[float(v) for v in b], iou=round(float(ious[j]), 3))
                        if linear is not None:
                            row["linear"] = linear.predict(cell_features(crop_image(raw, b), cells.masks[j], nuclei[j])[None])[0][0]
                rows.append(row)
        out[name] = rows
        found = sum(r["found"] for r in rows)
        print(f"{name}: {len(rows)} labelled cells, {found} found ({time.time() - t0:.0f} s)")
        RUNS.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(out))  # after each source: a later failure keeps what is done


# ---------------------------------------------------------------------------- report
def score_predicted(clf: CellTypeClassifier, rows: list[dict]) -> tuple[dict, list, list]:
    """A classifier on the found cells of :func:`cmd_segment`: scores (forced, and with the unidentified
    bin), plus the truths and calls for figures. Missed cells are counted, not typed."""
    from hemaseg.data.contract import image_to_rgb8
    from hemaseg.data.io import read_image

    found = [r for r in rows if r["found"]]
    by_image: dict[str, list[dict]] = {}
    for r in found:
        by_image.setdefault(r["image"], []).append(r)
    from hemaseg.celltypes import context_crop

    truth, crops, seconds = [], [], 0.0
    for image, rs in by_image.items():
        rgb = image_to_rgb8(read_image(image))
        t0 = time.perf_counter()
        for r in rs:
            b = r["box"]
            crops.append(context_crop(rgb, ((b[1] + b[3]) / 2, (b[0] + b[2]) / 2), r["pixel_size"], clf.cfg))
        seconds += time.perf_counter() - t0
        truth += [r["label"] for r in rs]
    t0 = time.perf_counter()  # the cells typed together, as a batch of images' cells would be
    calls = clf.calls(clf.probabilities(np.stack(crops))) if crops else []
    seconds += time.perf_counter() - t0
    forced = type_scores(truth, [c.top for c in calls])
    typed = [i for i, c in enumerate(calls) if c.type != "unidentified"]
    kept = type_scores([truth[i] for i in typed], [calls[i].type for i in typed]) if typed else {"accuracy": float("nan")}
    correct = np.array([to_level(c.top, t) == t for c, t in zip(calls, truth)])
    conf = np.array([c.confidence for c in calls])
    return ({**forced, "missed": len(rows) - len(found), "coverage": round(len(typed) / max(1, len(calls)), 3),
             "accuracy_typed": kept["accuracy"], "ece": reliability(conf, correct)["ece"],
             "ms_per_cell": round(1000 * seconds / max(1, len(calls)), 2)}, truth, calls)


def score_true(clf: CellTypeClassifier, held: CropSet) -> dict:
    probs = clf.probabilities(held.crops)
    return type_scores(held.labels, [clf.classes[i] for i in probs.argmax(1)])


def five_part(scores: dict) -> dict:
    """Scores over the five mature types only (the cells labelled otherwise left out)."""
    return {k: scores["per_type"][k]["recall"] for k in FIVE_PART if k in scores["per_type"]}


def cmd_report(args) -> None:
    predicted = json.loads((RUNS / "predicted.json").read_text())
    held: dict[tuple[str, str], CropSet] = {}  # (source, crop geometry) -> its held-out true cells
    models = [m for m in args.models if (RUNS / f"{m}.pt").is_file()]
    table, results = [], {}
    for m in models:
        clf = CellTypeClassifier.load(RUNS / f"{m}.pt")
        without = clf.report.get("without", [])
        for name in SOURCES:
            if without and name not in without:
                continue  # a cross-lab model is scored on the source it never saw
            s, truth, calls = score_predicted(clf, predicted[name])
            key = (name, geometry(clf.cfg))
            if key not in held:
                held[key] = load_set(RUNS / f"held_{name}{key[1]}.npz")
            t = score_true(clf, held[key])
            results[(m, name)] = (s, truth, calls)
            table.append({"model": m, "source": name, "cells": s["cells"], "missed": s["missed"], "accuracy": s["accuracy"],
                          "balanced": s["balanced_accuracy"], "true-cell acc": t["accuracy"], "true-cell bal": t["balanced_accuracy"],
                          "coverage": s["coverage"], "acc typed": s["accuracy_typed"], "ECE": s["ece"], "ms/cell": s["ms_per_cell"]})
    for name, rows in predicted.items():  # the baseline: the linear classifier of the default call before issue 18
        found = [r for r in rows if r["found"] and "linear" in r]
        if found:
            s = type_scores([r["label"] for r in found], [r["linear"] for r in found])
            table.append({"model": "linear (before)", "source": name, "cells": s["cells"], "missed": len(rows) - len(found),
                          "accuracy": s["accuracy"], "balanced": s["balanced_accuracy"]})
    cols = ["model", "source", "cells", "missed", "accuracy", "balanced", "true-cell acc", "true-cell bal", "coverage",
            "acc typed", "ECE", "ms/cell"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in table]
    per_type = []
    main = args.models[0]
    for name in SOURCES:
        if (main, name) in results:
            s = results[(main, name)][0]
            per_type.append(f"\n{main} on {name} (found cells): "
                            + ", ".join(f"{t} n={v['n']} P {v['precision']} R {v['recall']}" for t, v in s["per_type"].items()))
    text = "\n".join(lines) + "\n" + "\n".join(per_type)
    print(text)
    (RUNS / "report.md").write_text(text + "\n")
    (RUNS / "report.json").write_text(json.dumps({"table": table, "per_type": {f"{m}/{n}": r[0] for (m, n), r in results.items()}},
                                                 indent=1, default=str))
    if any(k[0] == main for k in results):
        figures(main, results)


def figures(main: str, results: dict) -> None:
    """Confusion matrices per source, the reliability diagram and the coverage/accuracy curves of the
    main model on found cells."""
    from hemaseg.celltypes import coverage_curve
    from hemaseg.viz import confusion_png, coverage_png, reliability_png

    clf = CellTypeClassifier.load(RUNS / f"{main}.pt")
    tables, curves = {"calibration cells (training sources)": clf.report.get("reliability")}, {}
    for name in SOURCES:
        if (main, name) not in results:
            continue
        _, truth, calls = results[(main, name)]
        said = [to_level(c.top, t) for c, t in zip(calls, truth)]
        labels = [t for t in (*FIVE_PART, *TYPES) if t in set(truth)]
        (RUNS / f"confusion_{name}.png").write_bytes(confusion_png(truth, said, labels, f"{main} on {name}, held out (found cells)"))
        correct = np.array([s == t for s, t in zip(said, truth)])
        conf = np.array([c.confidence for c in calls])
        tables[f"{name} held out"] = reliability(conf, correct)
        curves[name] = coverage_curve(conf, correct)
    (RUNS / "reliability.png").write_bytes(reliability_png(tables))
    (RUNS / "coverage.png").write_bytes(coverage_png(curves, clf.cfg.threshold))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("crops")
    t = sub.add_parser("train")
    for p in (c, t):  # crop geometry (default: TypeConfig's); train reads the crops made with the same
        p.add_argument("--pixel-size", type=float, default=None, help="um per px of the crops")
        p.add_argument("--context", type=int, default=None, help="stored window side (px)")
        p.add_argument("--size", type=int, default=None, help="side the network sees (px)")
    t.add_argument("--name", required=True)
    t.add_argument("--without", action="append", default=[], choices=list(SOURCES))
    t.add_argument("--stain", default="reinhard", choices=["reinhard", "none"])
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--arch", default="efficientnet_lite0", choices=["efficientnet_lite0", "resnet18"])
    t.add_argument("--random-init", action="store_true", help="random weights, not ImageNet's (resnet18: always)")
    t.add_argument("--lr", type=float, default=1e-3)
    v = sub.add_parser("views")
    v.add_argument("--model", required=True)
    v.add_argument("--name", required=True)
    v.add_argument("--views", type=int, default=8)
    s = sub.add_parser("segment")
    s.add_argument("--baseline", type=Path, default=None, help="the old linear classifier (JSON)")
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--again", action="store_true", help="segment every source again")
    r = sub.add_parser("report")
    r.add_argument("--models", nargs="+", default=["lite0-12", "lite0-12-v4", "lite0-12-v8", "bundled-v8", "lite-no-bccd",
                                                   "lite-no-dataset2", "lite-no-pbc", "no-bccd", "no-bccd-nostain", "no-dataset2", "no-pbc"])
    args = ap.parse_args()
    torch.manual_seed(0)
    {"crops": cmd_crops, "train": cmd_train, "views": cmd_views, "segment": cmd_segment, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
