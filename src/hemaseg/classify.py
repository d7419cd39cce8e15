"""White-cell type from the segmented cell: shape and colour features + a linear classifier.

Features are scale-free (ratios, shape descriptors, colours), so crops taken at different
magnifications share one model. The classifier is a multinomial logistic regression fitted with
scikit-learn and stored as plain JSON numbers (no pickle: loading it runs no code). A cell whose best
class probability is below ``threshold`` is reported as ``unidentified``, never forced into a type.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.color import rgb2hsv
from skimage.measure import regionprops

from .data.io import write_json
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

    def save(self, path: str | Path) -> Path:
        return write_json(path, {"format": "hemaseg-wbc-classifier", "version": 1, **asdict(self)})

    @classmethod
    def load(cls, path: str | Path) -> LinearClassifier:
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{p}: cannot read classifier ({err})") from err
        if d.pop("format", None) != "hemaseg-wbc-classifier" or d.pop("version", None) != 1:
            raise ValueError(f"{p}: not a hemaseg white-cell classifier")
        fields = {k: (tuple(tuple(r) for r in v) if k == "coef" else tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        clf = cls(**fields)
        if len(clf.coef) != len(clf.classes) or any(len(r) != len(clf.features) for r in clf.coef):
            raise ValueError(f"{p}: classifier arrays do not fit its classes and features")
        return clf


def fit_linear(X: np.ndarray, y: list[str], threshold: float = 0.5, C: float = 1.0) -> LinearClassifier:
    """Fit a class-balanced multinomial logistic regression (scikit-learn) on features ``X``."""
    from sklearn.linear_model import LogisticRegression

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


def read_zheng_classes(path: str | Path) -> dict[str, str]:
    """Zheng et al.'s ``classes_*.csv`` (image id -> 1..5) as ``{"001": "neutrophil", ...}``."""
    out = {}
    with open(path, encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            image_id, label = int(row[0]), int(row[1])
            out[f"{image_id:03d}"] = WBC_TYPES[label - 1]
        except (ValueError, IndexError) as err:
            raise ValueError(f"{path}:{line_no}: expected 'image id,class 1..5', got {row}") from err
    return out
