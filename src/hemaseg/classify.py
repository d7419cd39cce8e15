"""White-cell type from the segmented cell: shape and colour features + a linear classifier.

Features are scale-free (ratios, shape descriptors, colours), so crops taken at different
magnifications share one model. The classifier is a multinomial logistic regression fitted with
scikit-learn and stored as plain JSON numbers (no pickle: loading it runs no code). A cell whose best
class probability is below ``threshold`` is reported as ``unidentified``, never forced into a type.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.color import rgb2hsv
from skimage.measure import regionprops

from .data.io import DataError, why, write_json
from .errors import SettingError
from .measure import circularity
from .nuclei import count_lobes

WBC_TYPES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
UNIDENTIFIED = "unidentified"

_SHAPE = ("circularity", "eccentricity", "solidity")
FEATURE_NAMES = (
    ("nc_ratio", "nucleus_fraction", "nucleus_lobes")
    + tuple(f"cell_{k}" for k in _SHAPE) + tuple(f"nucleus_{k}" for k in _SHAPE)
    + tuple(f"{part}_{c}_{stat}" for part in ("nucleus", "cytoplasm") for c in ("r", "g", "b", "h", "s", "v")
            for stat in ("mean", "std"))
)


def _shape(mask: np.ndarray) -> list[float]:
    if not mask.any():
        return [0.0, 0.0, 0.0]
    p = regionprops(np.pad(mask, 1).astype(np.uint8))[0]
    return [circularity(p.area, p.perimeter_crofton), float(p.eccentricity), float(p.solidity)]


def _colour(rgb: np.ndarray, hsv: np.ndarray, mask: np.ndarray) -> list[float]:
    if not mask.any():
        return [0.0] * 12
    px = np.concatenate([rgb[mask], hsv[mask]], axis=1)  # P x 6
    return [float(v) for pair in zip(px.mean(0), px.std(0)) for v in pair]


def cell_features(image: torch.Tensor, cell: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """Feature vector (see :data:`FEATURE_NAMES`) of one cell of ``image`` (``CHW float``) given its
    cell and nucleus masks (``HxW``)."""
    c = np.asarray(cell) != 0
    n = (np.asarray(nucleus) != 0) & c
    ys, xs = np.nonzero(c)
    if len(ys) == 0:
        raise ValueError("empty cell mask")
    sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    c, n = c[sl], n[sl]
    rgb = image[:, sl[0], sl[1]].permute(1, 2, 0).cpu().numpy().astype(np.float64)
    hsv = rgb2hsv(rgb)
    cyto = c & ~n
    area, nuc = c.sum(), n.sum()
    head = [nuc / max(area - nuc, 1), nuc / area, float(count_lobes(n))]
    return np.array(head + _shape(c) + _shape(n) + _colour(rgb, hsv, n) + _colour(rgb, hsv, cyto), dtype=np.float64)


@dataclass(frozen=True)
class LinearClassifier:
    """Standardise, then softmax of a linear map. Stored as JSON."""

    classes: tuple[str, ...]
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[tuple[float, ...], ...]  # classes x features
    intercept: tuple[float, ...]
    threshold: float = 0.5

    def proba(self, X: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(X) - np.array(self.mean)) / np.array(self.scale)
        logits = z @ np.array(self.coef).T + np.array(self.intercept)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> list[tuple[str, float]]:
        """``(type or "unidentified", confidence)`` per row of ``X``."""
        p = self.proba(X)
        best = p.argmax(axis=1)
        return [(self.classes[b] if p[i, b] >= self.threshold else UNIDENTIFIED, float(p[i, b]))
                for i, b in enumerate(best)]

    def save(self, path: str | Path, validation: dict | None = None) -> Path:
        """Write the classifier as JSON, with its ``validation`` figures (:func:`cross_validate`) if given."""
        extra = {"validation": validation} if validation is not None else {}
        return write_json(path, {"format": "hemaseg-wbc-classifier", "version": 1, **asdict(self), **extra})

    @classmethod
    def load(cls, path: str | Path) -> LinearClassifier:
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # missing, not UTF-8, not JSON
            raise SettingError(f"{p}: cannot read classifier ({why(err)})") from err
        if not isinstance(d, dict) or d.pop("format", None) != "hemaseg-wbc-classifier" or d.pop("version", None) != 1:
            raise SettingError(f"{p}: not a hemaseg white-cell classifier")
        d.pop("validation", None)
        fields = {k: (tuple(tuple(r) for r in v) if k == "coef" else tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        clf = cls(**fields)
        if len(clf.coef) != len(clf.classes) or any(len(r) != len(clf.features) for r in clf.coef):
            raise SettingError(f"{p}: classifier arrays do not fit its classes and features")
        return clf


def fit_linear(X: np.ndarray, y: list[str], threshold: float = 0.5, C: float = 1.0) -> LinearClassifier:
    """Fit a class-balanced multinomial logistic regression (scikit-learn) on features ``X``."""
    from sklearn.linear_model import LogisticRegression

    if len(set(y)) < 2:
        raise SettingError(f"{len(y)} labelled cells, all of one type ({', '.join(sorted(set(y))) or 'none'}): "
                         "a classifier needs cells of at least two types")
    bad = int((~np.isfinite(X)).any(axis=1).sum())
    if bad:
        raise SettingError(f"{bad} of {len(X)} cells have features that are not finite numbers (an empty nucleus or "
                         "cell?); leave those cells out")
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 1e-9] = 1.0
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=5000)
    model.fit((X - mean) / scale, y)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # sklearn stores one row for two classes
        coef, intercept = np.vstack([-coef, coef]) / 2, np.array([-intercept[0], intercept[0]]) / 2
    names = [str(c) for c in model.classes_]
    order = sorted(range(len(names)), key=lambda i: (WBC_TYPES.index(names[i]) if names[i] in WBC_TYPES else 99, names[i]))
    return LinearClassifier(tuple(names[i] for i in order), FEATURE_NAMES, tuple(mean), tuple(scale),
                            tuple(tuple(coef[i]) for i in order), tuple(intercept[i] for i in order), threshold)


def read_type_labels(path: str | Path) -> dict[str, str]:
    """A table of image -> white-cell type, for crop datasets with one labelled cell per image (as
    Zheng et al.'s ``classes_*.csv``): a header row, then ``image,type`` rows where ``image`` is a file
    stem or a number (``1`` matches ``001.bmp``) and ``type`` a name or ``1..5`` (in the order of
    :data:`WBC_TYPES`). Keys are the stems as written, numbers without leading zeros (see :func:`type_of`).
    A row with an empty type (unknown) is left out.
    """
    out = {}
    try:
        with open(path, encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read the type labels ({why(err)})") from err
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) > 1 and row[0].strip() and not row[1].strip():
            continue  # a known image whose type is unknown: left out, never guessed
        try:
            image, label = row[0].strip(), row[1].strip()
            if image.isdigit():
                image = str(int(image))
            kind = WBC_TYPES[int(label) - 1] if label.isdigit() else label.lower()
            if not image or not kind or (label.isdigit() and int(label) < 1):
                raise ValueError("empty field or type 0")
        except (ValueError, IndexError) as err:
            raise SettingError(f"{path}:{line_no}: expected 'image,type' with type a name or 1..{len(WBC_TYPES)}, got {row}") from err
        out[image] = kind
    if not out and not any("".join(r).strip() for r in rows[1:]):
        raise DataError(f"{path}: no 'image,type' rows (expected a header row, then one row per image)")
    return out


def type_of(labels: dict[str, str], stem: str) -> str | None:
    """The type :func:`read_type_labels` gives the image ``stem`` (``"001"`` finds key ``"1"``), or None."""
    if stem in labels:
        return labels[stem]
    return labels.get(str(int(stem))) if stem.isdigit() else None


def labelled_cells(source, labels: dict[str, str] | None = None, nuclei: str = "auto") -> tuple[np.ndarray, list[str], list[str]]:
    """Features, types and image paths of the labelled white cells of a dataset
    (:class:`~hemaseg.data.formats.DatasetSource`).

    A cell is labelled when its annotated class is a type of ``labels``' kind or of :data:`WBC_TYPES`
    (instance/COCO data whose classes are the types), or - with an image table ``labels``
    (:func:`read_type_labels`) - when it is the largest annotated cell of a listed image. Its nucleus
    is the annotated one (``nuclei="auto"``, where the data has it, else split) or the within-cell split (``"split"``).
    """
    from .data.formats import load_sample
    from .nuclei import split_nucleus

    if nuclei not in ("auto", "split"):
        raise SettingError(f"nuclei must be 'auto' or 'split', got {nuclei!r}")
    types = set(WBC_TYPES) | set((labels or {}).values())
    X, y, where = [], [], []
    for ref in source.refs:
        image, t = load_sample(ref, source.classes, coco=source.coco)
        names = [source.classes[k - 1] for k in t["labels"].tolist()]
        cells = [(k, n.lower()) for k, n in enumerate(names) if n.lower() in types]
        kind = type_of(labels, ref.image.stem) if labels else None
        if kind is not None and len(t["masks"]):
            cells = [(int(t["masks"].flatten(1).sum(1).argmax()), kind)]
        for k, kind in cells:
            cell = t["masks"][k].numpy()
            nucleus = t["nuclei"][k].numpy() if nuclei == "auto" and "nuclei" in t else None
            if nucleus is None or not nucleus.any():
                nucleus = split_nucleus(image, cell)
            X.append(cell_features(image, cell, nucleus))
            y.append(kind)
            where.append(str(ref.image))
    if not X:
        raise SettingError(f"{source.root}: no labelled white cell (give an image-type table, or annotate cells with type classes)")
    return np.array(X), y, where


def cross_validate(X: np.ndarray, y: list[str], folds: int = 5, seed: int = 0, threshold: float = 0.5) -> dict:
    """Stratified ``folds``-fold cross-validation (shuffled with ``seed``) of :func:`fit_linear`: accuracy,
    balanced accuracy, per-type precision/recall/n and the confusion matrix (forced to a type), and how
    many cells ``threshold`` sends to ``unidentified`` with the accuracy on the others."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y, dtype=object)
    classes = sorted(set(y), key=lambda c: (WBC_TYPES.index(c) if c in WBC_TYPES else 99, c))
    if len(y) < folds:
        raise SettingError(f"{len(y)} labelled cells cannot be split into {folds} folds")
    k = folds  # a type with fewer cells than folds is still tested (scikit-learn warns)
    forced, with_bin = np.empty(len(y), object), np.empty(len(y), object)
    with warnings.catch_warnings():  # rare types are reported in "few" instead of scikit-learn's warning
        warnings.simplefilter("ignore", UserWarning)
        splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(X, y))
    for train, test in splits:
        clf = fit_linear(X[train], list(y[train]), threshold=threshold)
        forced[test] = [clf.classes[i] for i in clf.proba(X[test]).argmax(1)]
        with_bin[test] = [t for t, _ in clf.predict(X[test])]
    p, r, _, n = precision_recall_fscore_support(y, forced, labels=classes, zero_division=0)
    known = with_bin != UNIDENTIFIED
    return {"folds": k, "cells": len(y), "classes": classes, "accuracy": float((forced == y).mean()),
            "balanced_accuracy": float(balanced_accuracy_score(y, forced)),
            "per_class": {c: {"n": int(ni), "precision": float(pi), "recall": float(ri)} for c, ni, pi, ri in zip(classes, n, p, r)},
            "confusion": confusion_matrix(y, forced, labels=classes).tolist(),
            "few": [c for c in classes if (y == c).sum() < k],  # types with fewer cells than folds: unreliable figures
            "unidentified": int((~known).sum()), "threshold": threshold,
            "accuracy_identified": float((with_bin[known] == y[known]).mean()) if known.any() else 0.0}


def fit_linear_sources(sources: Sequence, labels: Sequence[dict[str, str] | None], nuclei: str = "auto", threshold: float = 0.5,
                       folds: int = 5, seed: int = 0) -> tuple[LinearClassifier, dict]:
    """What ``hemaseg fit-classifier --kind linear`` does: the labelled cells of every dataset
    (:func:`labelled_cells`, with its image table of ``labels`` or None), stacked; their cross-validation
    (:func:`cross_validate`) and the classifier fitted on all of them. Returns ``(classifier, validation)``."""
    parts = [labelled_cells(src, lab, nuclei) for src, lab in zip(sources, labels)]
    X, y = np.vstack([p[0] for p in parts]), [t for p in parts for t in p[1]]
    cv = cross_validate(X, y, folds, seed, threshold)
    return fit_linear(X, y, threshold=threshold), cv


def load_classifier(path: str | Path):
    """A white-cell type classifier from its file: a linear model's JSON (``.json``, this module) or a
    cell-image CNN (:class:`hemaseg.celltypes.CellTypeClassifier`, any other file)."""
    if Path(path).suffix.lower() == ".json":
        return LinearClassifier.load(path)
    from .celltypes import CellTypeClassifier

    return CellTypeClassifier.load(path)
