"""Cross-validated white-cell typing on Zheng et al. 2018 (dataset1 + dataset2 together).

    .venv/bin/python benchmarks/wbc_classify.py --zheng ../shared/data/wbc-zheng2018 [--nuclei auto] [--save wbc.json]

Cells: the true cell outlines (hemaseg.classify.labelled_cells); nuclei: hemaseg.nuclei.split_nucleus
inside them (--nuclei split) or the annotated ones (--nuclei auto); features: hemaseg.classify.cell_features.
`hemaseg fit-classifier` runs the same cross-validation of the linear model and saves it. Stratified 5-fold CV with a fixed seed, comparing the shipped
linear model with a random forest. Prints per-class precision/recall, confusion matrices, balanced
accuracy and the effect of the "unidentified" threshold. Labels are the authors' (not expert-checked).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)
from sklearn.model_selection import StratifiedKFold

from hemaseg.classify import UNIDENTIFIED, WBC_TYPES, fit_linear, labelled_cells, read_type_labels
from hemaseg.data.formats import open_dataset


def load(zheng: Path, nuclei: str):
    X, y, src_name = [], [], []
    for d in ("dataset1", "dataset2"):
        Xd, yd, _ = labelled_cells(open_dataset(zheng / d), read_type_labels(zheng / f"classes_{d}.csv"), nuclei)
        X.append(Xd)
        y += yd
        src_name += [d] * len(yd)
    return np.vstack(X), np.array(y), np.array(src_name)


def table(y, pred, classes) -> str:
    p, r, _, n = precision_recall_fscore_support(y, pred, labels=list(classes), zero_division=0)
    lines = ["| class | n | precision | recall |", "|---|---|---|---|"]
    lines += [f"| {c} | {k} | {a:.3f} | {b:.3f} |" for c, k, a, b in zip(classes, n, p, r)]
    return "\n".join(lines)


def confusion(y, pred, classes, cols) -> str:
    m = confusion_matrix(y, pred, labels=list(cols))[: len(classes)]
    head = "| true \\ predicted | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1)
    return head + "\n" + "\n".join(f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(classes, m))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zheng", default="../shared/data/wbc-zheng2018", type=Path)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--nuclei", default="split", choices=("auto", "split"), help="nucleus of each cell: annotated or split")
    ap.add_argument("--save", type=Path, help="fit on all images and save the linear classifier (JSON)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    X, y, src = load(args.zheng, args.nuclei)
    print(f"{len(y)} cells ({(src == 'dataset1').sum()} + {(src == 'dataset2').sum()}), features in {time.perf_counter() - t0:.0f} s")
    classes = [c for c in WBC_TYPES if c in set(y)]
    folds = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
    lin_forced, lin_thr, rf = np.empty(len(y), object), np.empty(len(y), object), np.empty(len(y), object)
    for train, test in folds.split(X, y):
        clf = fit_linear(X[train], list(y[train]), threshold=args.threshold)
        proba = clf.proba(X[test])
        lin_forced[test] = [clf.classes[k] for k in proba.argmax(1)]
        lin_thr[test] = [c for c, _ in clf.predict(X[test])]
        forest = RandomForestClassifier(300, class_weight="balanced", random_state=args.seed).fit(X[train], y[train])
        rf[test] = forest.predict(X[test])
    for name, pred in (("linear (shipped)", lin_forced), ("random forest", rf)):
        print(f"\n### {name}: balanced accuracy {balanced_accuracy_score(y, pred):.3f}, "
              f"accuracy {(pred == y).mean():.3f}\n")
        print(table(y, pred, classes))
        print()
        print(confusion(y, pred, classes, classes))
    ident = lin_thr != UNIDENTIFIED
    print(f"\n### linear with threshold {args.threshold}: {(~ident).sum()} of {len(y)} cells unidentified; "
          f"accuracy on the identified {(lin_thr[ident] == y[ident]).mean():.3f} "
          f"(forced: {(lin_forced == y).mean():.3f})\n")
    print(confusion(y, lin_thr, classes, classes + [UNIDENTIFIED]))
    if args.save:
        fit_linear(X, list(y), threshold=args.threshold).save(args.save)
        print(f"\nsaved {args.save}")


if __name__ == "__main__":
    main()
