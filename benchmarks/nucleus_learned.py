"""Learned nuclei vs the within-cell split, and white-cell typing with predicted outlines, on held-out
Zheng et al. 2018 images (dataset1 and dataset2 reported apart).

    .venv/bin/python benchmarks/nucleus_learned.py --zheng ../shared/data/wbc-zheng2018 --work runs/nucleus-learned

1. Trains the default configuration on both datasets (the same as
   ``hemaseg train --data .../dataset1 --data .../dataset2 --out WORK/run``; skipped if WORK/run/best.pt
   exists): each dataset split 80/20 with seed 0, nuclei learned as a "nucleus" class.
2. On the held-out images of each dataset (``hemaseg.evaluation.evaluate_method``, the code of
   ``hemaseg evaluate``): nucleus Dice with the learned nuclei (``--nuclei auto``) and with the split of
   the same model's cells (``--nuclei split``), whole-cell IoU, Dice and F1@0.5 alongside.
3. White-cell type (Zheng's labels) of the held-out cells, by a linear classifier fitted on the
   training images' true outlines (with true or split nuclei), tested on true outlines and on the
   model's outlines (learned or split nuclei): accuracy and balanced accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from hemaseg.classify import cell_features, fit_linear, read_type_labels, type_of
from hemaseg.data.dataset import select_refs
from hemaseg.data.formats import load_sample, open_dataset
from hemaseg.evaluation import evaluate_method
from hemaseg.metrics import iou_matrix
from hemaseg.nuclei import cell_nuclei, split_nucleus
from hemaseg.predict import ModelMethod, SegmentConfig, run_method
from hemaseg.data.contract import crop_image
from hemaseg.train import TrainConfig, train

DATASETS = ("dataset1", "dataset2")


def labelled_cell(target) -> int:
    """Zheng's crops label one white cell: the largest annotated region."""
    return int(target["masks"].flatten(1).sum(1).argmax())


def true_features(zheng: Path, run: Path, subset: str):
    """Features of the labelled cell of each image of ``subset``, true outline with true / split nucleus."""
    X = {"true nuclei": [], "split nuclei": []}
    y = []
    for d in DATASETS:
        labels = read_type_labels(zheng / f"classes_{d}.csv")
        src = open_dataset(zheng / d)
        for ref in select_refs(src.refs, src.root, run / "split.json", subset):
            image, t = load_sample(ref, src.classes)
            k = labelled_cell(t)
            cell = t["masks"][k].numpy()
            X["true nuclei"].append(cell_features(image, cell, t["nuclei"][k].numpy()))
            X["split nuclei"].append(cell_features(image, cell, split_nucleus(image, cell)))
            y.append(type_of(labels, ref.image.stem))
    return {k: np.array(v) for k, v in X.items()}, np.array(y)


def predicted_features(zheng: Path, run: Path, method: ModelMethod):
    """Held-out cells as the model outlines them (the predicted cell that best overlaps the labelled one;
    None where no predicted cell reaches IoU 0.5), with its learned or split nucleus."""
    X = {"model cells, learned nuclei": [], "model cells, split nuclei": []}
    for d in DATASETS:
        src = open_dataset(zheng / d)
        for ref in select_refs(src.refs, src.root, run / "split.json", "val"):
            image, t = load_sample(ref, src.classes)
            cells = run_method(method, image, SegmentConfig())
            masks = cells.dense()
            iou = iou_matrix(t["masks"][labelled_cell(t)][None].numpy(), masks)[0] if len(masks) else np.zeros(0)
            if not len(iou) or iou.max() < 0.5:
                for v in X.values():
                    v.append(None)
                continue
            j = int(iou.argmax())
            names = [method.classes[i - 1] for i in cells.labels.tolist()]
            learned = cell_nuclei(image, cells, names)[j]
            box = cells.boxes[j]
            X["model cells, learned nuclei"].append(cell_features(crop_image(image, box), cells.masks[j], learned))
            X["model cells, split nuclei"].append(cell_features(image, masks[j], split_nucleus(image, masks[j])))
    return X


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zheng", type=Path, default=Path("../shared/data/wbc-zheng2018"))
    ap.add_argument("--work", type=Path, default=Path("runs/nucleus-learned"))
    args = ap.parse_args()
    run = args.work / "run"
    if not (run / "best.pt").is_file():
        t0 = time.perf_counter()
        train(TrainConfig(data=tuple(str(args.zheng / d) for d in DATASETS), out=str(run)), progress=False)
        print(f"trained in {(time.perf_counter() - t0) / 60:.1f} min")
    method = ModelMethod.from_checkpoint(run / "best.pt")
    print(f"model {run / 'best.pt'} (classes {method.classes} + nucleus)\n")

    print("| held-out images | nucleus from | nucleus Dice | whole-cell IoU | whole-cell Dice | F1@0.5 |\n|---|---|---|---|---|---|")
    for d in DATASETS:
        src = open_dataset(args.zheng / d)
        refs = select_refs(src.refs, src.root, run / "split.json", "val")
        for mode, label in (("auto", "learned 'nucleus' instances"), ("split", "within-cell split")):
            s = evaluate_method(method, src, refs, SegmentConfig(nuclei=mode), progress=False).summary
            print(f"| {d} ({len(refs)}) | {label} | {s['nucleus_dice']:.4f} | {s['mean_iou']:.4f} | "
                  f"{s['mean_dice']:.4f} | {s['f1_50']:.3f} |")

    X_train, y_train = true_features(args.zheng, run, "train")
    X_test, y_test = true_features(args.zheng, run, "val")
    X_pred = predicted_features(args.zheng, run, method)
    tests = {"true outlines, true nuclei": list(X_test["true nuclei"]), "true outlines, split nuclei": list(X_test["split nuclei"]), **X_pred}
    print(f"\nwhite-cell type of {len(y_test)} held-out cells (classifier fitted on {len(y_train)} training cells, true outlines)\n")
    print("| fitted with | tested on | found | accuracy | balanced accuracy |\n|---|---|---|---|---|")
    for fit_name in ("true nuclei", "split nuclei"):
        clf = fit_linear(X_train[fit_name], list(y_train))
        for test_name, rows in tests.items():
            found = [i for i, r in enumerate(rows) if r is not None]
            pred = np.array(["missed"] * len(y_test), dtype=object)
            if found:
                proba = clf.proba(np.array([rows[i] for i in found]))
                pred[found] = [clf.classes[k] for k in proba.argmax(1)]
            print(f"| {fit_name} | {test_name} | {len(found)}/{len(y_test)} | {(pred == y_test).mean():.3f} | "
                  f"{balanced_accuracy_score(y_test, pred):.3f} |")


if __name__ == "__main__":
    main()
