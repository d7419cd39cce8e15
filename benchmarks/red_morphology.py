"""Red-cell morphology classes learned from Chula RBC-12's points (issue 21, point 3): a cell-image
classifier (:mod:`hemaseg.celltypes`' network and training, with Chula's 12 classes as its types) on the
red cell each point falls in, trained on the training fields and scored on the 62 held-out fields of
benchmarks/real_sources.py: balanced accuracy, per-class recall, confusion matrix.

    .venv/bin/python benchmarks/red_morphology.py crops            # cells of every field, ~3 min
    .venv/bin/python benchmarks/red_morphology.py train --epochs 8 # CPU minutes printed
    .venv/bin/python benchmarks/red_morphology.py report

Each point is moved to the centre of the red cell it falls in (found by :mod:`hemaseg.redcells` at the
field's measured pixel size), as a red cell found by ``segment --red-cells`` is shown to the classifier;
a point in no found cell keeps its place. "uncategorised" points are left out.
Chula RBC-12 (Naruenatthanaset et al. 2021, MIT).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from real_sources import PIXEL_SIZE, folder, held_out  # noqa: E402

from hemaseg.celltypes import (CellTypeClassifier, CropSet, TypeConfig, TypeTrainConfig, context_crop,  # noqa: E402
                               fit_celltypes, type_scores)
from hemaseg.data.formats import list_images  # noqa: E402
from hemaseg.data.io import read_image  # noqa: E402
from hemaseg.data.contract import image_to_rgb8  # noqa: E402
from hemaseg.redcells import find_smear_cells  # noqa: E402
from hemaseg.scale import RED_CELL_UM  # noqa: E402

CLASSES = ("normal", "macrocyte", "microcyte", "spherocyte", "target", "stomatocyte", "ovalocyte", "teardrop",
           "burr", "schistocyte", "uncategorised", "hypochromia", "elliptocyte")
TYPES = tuple(c for c in CLASSES if c != "uncategorised")
CFG = TypeConfig(types=TYPES, pixel_size=0.2, context=80, size=64)
RUNS = Path("runs/red_morphology")


def field_crops(path: Path, cfg: TypeConfig = CFG) -> CropSet:
    rgb = image_to_rgb8(read_image(path))
    px = PIXEL_SIZE["chula"]
    cells = find_smear_cells(rgb, RED_CELL_UM / px)
    red = cells.select(cells.labels == 1)
    lab = red.label_image()
    crops, labels, names = [], [], []
    for x, y, c in np.loadtxt(folder("chula") / "labels" / f"{path.stem}.txt", ndmin=2).astype(int):
        if CLASSES[c] == "uncategorised":
            continue
        k = int(lab[min(y, lab.shape[0] - 1), min(x, lab.shape[1] - 1)])
        if k:
            x0, y0, _, _ = red.boxes[k - 1]
            ys, xs = np.nonzero(red.masks[k - 1])
            y, x = y0 + ys.mean(), x0 + xs.mean()
        crops.append(context_crop(rgb, (float(y), float(x)), px, cfg))
        labels.append(CLASSES[c])
        names.append(f"{path.stem}@{x:.0f},{y:.0f}")
    return CropSet(np.array(crops, np.uint8).reshape(-1, cfg.context, cfg.context, 3), labels, ["chula"] * len(labels), names)


def crops() -> None:
    t0 = time.time()
    held = {str(p) for p in held_out("chula")}
    files = list_images([folder("chula")])
    for part in ("train", "held"):
        sets = [field_crops(p) for p in files if (str(p) in held) == (part == "held")]
        s = CropSet.join(sets)
        RUNS.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(RUNS / f"{part}.npz", crops=s.crops, labels=np.array(s.labels), names=np.array(s.names))
        print(f"{part}: {len(s)} cells", flush=True)
    print(f"crops in {(time.time() - t0) / 60:.1f} min")


def _load(part: str) -> CropSet:
    z = np.load(RUNS / f"{part}.npz")
    return CropSet(z["crops"], z["labels"].tolist(), ["chula"] * len(z["labels"]), z["names"].tolist())


def train(epochs: int, name: str) -> None:
    torch.set_num_threads(2)
    clf = fit_celltypes(_load("train"), CFG, TypeTrainConfig(epochs=epochs, seed=0, target_accuracy=0.9), progress=False)
    clf.save(RUNS / f"{name}.pt")
    print(f"trained in {clf.report['minutes']} min -> {RUNS / name}.pt")


def report(name: str) -> None:
    torch.set_num_threads(2)
    clf = CellTypeClassifier.load(RUNS / f"{name}.pt")
    held = _load("held")
    t0 = time.time()
    probs = clf.probabilities(held.crops)
    said = [clf.classes[i] for i in probs.argmax(1)]
    sc = type_scores(held.labels, said)
    counts = {c: held.labels.count(c) for c in TYPES}
    big = [c for c in TYPES if counts[c] >= 30]
    sc["balanced_accuracy_classes_30"] = round(float(np.mean([sc["per_type"][c]["recall"] for c in big])), 3) if big else None
    sc["classes_30"] = big
    sc["seconds_per_cell"] = (time.time() - t0) / len(held)
    (RUNS / f"{name}_report.json").write_text(json.dumps(sc, indent=2) + "\n")
    print(json.dumps({k: sc[k] for k in ("cells", "accuracy", "balanced_accuracy", "balanced_accuracy_classes_30", "seconds_per_cell")}))
    print("recall:", {c: (counts[c], sc["per_type"].get(c, {}).get("recall")) for c in TYPES})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("crops", "train", "report"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--name", default="lite0")
    a = ap.parse_args()
    {"crops": crops, "train": lambda: train(a.epochs, a.name), "report": lambda: report(a.name)}[a.step]()


if __name__ == "__main__":
    main()
