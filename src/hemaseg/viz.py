"""Pictures: overlays of cell outlines, side-by-side figures, training curves (PNG bytes or arrays)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

from .cells import Cells

PALETTE = np.array([(255, 215, 0), (0, 200, 255), (255, 64, 129), (118, 255, 3), (255, 145, 0),
                    (170, 0, 255), (0, 230, 118), (255, 255, 255)], np.uint8)


def class_colour(class_index: int) -> tuple[int, int, int]:
    """Colour of class ``class_index`` (1-based) in overlays."""
    return tuple(int(c) for c in PALETTE[(class_index - 1) % len(PALETTE)])


NUCLEUS_COLOUR = (255, 0, 255)


def overlay(image: np.ndarray, masks: np.ndarray, labels: Sequence[int] | None = None,
            scores: Sequence[float] | None = None, text: bool = True, nuclei: np.ndarray | None = None) -> np.ndarray:
    """``HWC uint8`` image with each cell's outline in its class colour, and its id (and score).

    ``masks`` is ``N x H x W``; overlapping cells are drawn in score order (the best on top). ``nuclei``
    (``N x H x W``) adds nucleus outlines in magenta. Dense form of :func:`overlay_cells`.
    """
    masks = np.asarray(masks)
    n = len(masks)
    result = {"masks": masks, "labels": np.asarray(labels if labels is not None else [1] * n),
              "scores": np.asarray(scores if scores is not None else np.zeros(n))}
    if nuclei is not None:
        result["nuclei"] = np.asarray(nuclei)
    cells = Cells.from_result(result, *np.asarray(image).shape[:2])
    return overlay_cells(image, cells, text=text, show_scores=scores is not None)


def overlay_cells(image: np.ndarray, cells: Cells, text: bool = True, show_scores: bool = True) -> np.ndarray:
    """``HWC uint8`` image with the outline of each of the sparse ``cells`` in its class colour (the best
    score on top where they overlap), nucleus outlines (``cells.nuclei``) in magenta, and with ``text``
    each cell's id (``1..N`` in order) and score."""
    out = np.array(image, dtype=np.uint8, copy=True)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    if not len(cells):
        return out
    lab = cells.label_image()
    edges = find_boundaries(lab, mode="inner")
    colours = np.array([class_colour(int(c)) for c in cells.labels], np.uint8)
    out[edges] = colours[lab[edges].astype(np.int64) - 1]
    if cells.nuclei is not None:
        nuc = np.zeros(lab.shape, bool)
        for (x0, y0, x1, y1), n in zip(cells.boxes, cells.nuclei):
            nuc[y0:y1, x0:x1] |= n
        out[find_boundaries(nuc, mode="inner")] = NUCLEUS_COLOUR
    if text:
        pil = Image.fromarray(out)
        draw = ImageDraw.Draw(pil)
        for i, ((x0, y0, _, _), m) in enumerate(zip(cells.boxes, cells.masks)):
            ys, xs = np.nonzero(m)
            caption = f"{i + 1}" + (f" {float(cells.scores[i]):.2f}" if show_scores else "")
            draw.text((float(xs.mean() + x0) - 4, float(ys.mean() + y0) - 5), caption, fill=tuple(int(c) for c in colours[i]))
        out = np.asarray(pil)
    return out


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str], gap: int = 4) -> np.ndarray:
    """Panels of equal height (``HWC uint8``) in a row with a title strip above each."""
    h = max(p.shape[0] for p in panels)
    strip = 14
    cols = []
    for p, t in zip(panels, titles):
        canvas = np.full((h + strip, p.shape[1], 3), 255, np.uint8)
        canvas[strip:strip + p.shape[0]] = p
        pil = Image.fromarray(canvas)
        ImageDraw.Draw(pil).text((2, 1), t, fill=(0, 0, 0))
        cols.append(np.asarray(pil))
        cols.append(np.full((h + strip, gap, 3), 255, np.uint8))
    return np.concatenate(cols[:-1], axis=1)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure_png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return buf.getvalue()


def histogram_png(values: Sequence[float], xlabel: str, bins: int = 20) -> bytes:
    """A histogram of ``values`` as PNG bytes."""
    fig, ax = _pyplot().subplots(figsize=(5, 2.5), dpi=100)
    ax.hist(values, bins=bins)
    ax.set(xlabel=xlabel, ylabel="cells")
    return _figure_png(fig)


def training_curves_png(history: list[dict]) -> bytes:
    """Loss and validation scores per epoch from a run's ``metrics.csv`` rows, as PNG bytes."""
    plt = _pyplot()
    epochs = [int(float(r["epoch"])) for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    a.plot(epochs, [float(r["loss"]) for r in history], marker="o")
    a.set(xlabel="epoch", ylabel="training loss", yscale="log")
    for key, name in (("val_mean_iou", "mean IoU"), ("val_mean_dice", "Dice"), ("val_f1_50", "F1@0.5")):
        if history and key in history[0]:
            b.plot(epochs, [float(r[key]) for r in history], marker="o", label=name)
    b.set(xlabel="epoch", ylabel="validation", ylim=(0, 1))
    b.legend(loc="lower right")
    return _figure_png(fig)


def confusion_png(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str], title: str = "") -> bytes:
    """Confusion matrix (rows: truth, columns: prediction; extra predicted types appended), counts
    and row shares, as PNG bytes."""
    plt = _pyplot()
    cols = list(labels) + sorted(set(predicted) - set(labels))
    m = np.zeros((len(labels), len(cols)), int)
    for t, p in zip(truth, predicted):
        if t in labels:
            m[list(labels).index(t), cols.index(p)] += 1
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 0.55 * len(cols), 1.4 + 0.45 * len(labels)), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cols)), [c.replace("_", " ") for c in cols], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), [c.replace("_", " ") for c in labels], fontsize=7)
    ax.set(xlabel="predicted", ylabel="truth", title=title)
    ax.title.set_fontsize(8)
    return _figure_png(fig)


def reliability_png(tables: dict[str, dict]) -> bytes:
    """Reliability diagram: per confidence bin, accuracy against mean confidence (the diagonal is a
    calibrated classifier), one line per ``{name: hemaseg.celltypes.reliability(...)}`` with its ECE."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    for name, r in tables.items():
        if r and r.get("bins"):
            ax.plot([b["confidence"] for b in r["bins"]], [b["accuracy"] for b in r["bins"]], marker="o",
                    label=f"{name} (ECE {r['ece']:.3f})")
    ax.set(xlabel="confidence (best type's probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=7)
    return _figure_png(fig)


def coverage_png(curves: dict[str, list[dict]], threshold: float | None = None) -> bytes:
    """Accuracy of the typed cells against the share typed, as the unidentified threshold rises."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 3.2), dpi=100)
    for name, curve in curves.items():
        pts = [c for c in curve if c["coverage"] > 0]
        ax.plot([c["coverage"] for c in pts], [c["accuracy"] for c in pts], marker=".", label=name)
        if threshold is not None:
            at = min(pts, key=lambda c: abs(c["threshold"] - threshold))
            ax.scatter([at["coverage"]], [at["accuracy"]], color="red", zorder=3)
    ax.set(xlabel="share of cells typed (rest unidentified)", ylabel="accuracy of typed cells")
    ax.legend(loc="lower left", fontsize=7)
    return _figure_png(fig)
