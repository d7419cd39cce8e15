"""Evaluate a segmentation method against ground truth in any supported format.

Per image: the recipe's union IoU and Dice, cell counts, matches at IoU 0.5, seconds, and - where the
ground truth has nuclei - the Dice and IoU of the predicted nuclei (learned or split, :mod:`hemaseg.nuclei`) against the true ones. Over the set:
mean IoU and Dice, instance matching at IoU 0.5-0.9 (pooled counts, :mod:`hemaseg.metrics`), and COCO
mask and box AP/AP50/AP75 (pycocotools, class-agnostic, up to ``max_dets`` detections per image so
dense images are not undercounted).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm.auto import tqdm

from .cells import Cells, encode_rle_in_box, iou_matrix_cells
from .data.contract import image_to_tensor, labels_to_masks, tensor_to_image
from .data.formats import DataError, DatasetSource, SampleRef, load_sample, read_label_annotation
from .data.io import csv_text, read_image, write_image, write_json, write_text
from .metrics import MatchCounter, dice, matched_ious, mean_of, semantic_iou
from .nuclei import cell_nuclei
from .predict import Method, SegmentConfig, segment_image
from .viz import overlay, side_by_side

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class Evaluation:
    """What :func:`evaluate_method` measured. ``figures`` maps the index of each worst/best image to
    ``(HWC uint8 image, true label image, predicted label image)``."""

    method: str
    per_image: list[dict]
    summary: dict
    figures: dict[int, tuple] = field(default_factory=dict, repr=False)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, error): not scored, the rest went on


class CocoAccumulator:
    """Collects ground truth and detections image by image as RLE (compact), then runs COCOeval."""

    def __init__(self, max_dets: int = 1000):
        self.max_dets = max_dets
        self.images: list[dict] = []
        self.gts: list[dict] = []
        self.dts: list[dict] = []

    def add(self, truth: Cells, pred: Cells) -> None:
        """One image's true and predicted cells (sparse: each RLE is built from its box)."""
        i = len(self.images) + 1
        h, w = truth.height, truth.width
        self.images.append({"id": i, "height": h, "width": w})
        for m, box in zip(truth.masks, truth.boxes):
            rle = encode_rle_in_box(m, box, h, w)
            self.gts.append({"id": len(self.gts) + 1, "image_id": i, "category_id": 1, "segmentation": rle, "iscrowd": 0,
                             "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
        for m, box, score in zip(pred.masks, pred.boxes, pred.scores):
            rle = encode_rle_in_box(m, box, h, w)
            self.dts.append({"image_id": i, "category_id": 1, "segmentation": rle, "score": float(score),
                             "bbox": [float(v) for v in mask_utils.toBbox(rle)]})

    def result(self) -> dict:
        out = {}
        for iou_type, prefix in (("segm", "mask"), ("bbox", "box")):
            if not self.dts or not self.gts:
                out.update({f"{prefix}_AP": 0.0, f"{prefix}_AP50": 0.0, f"{prefix}_AP75": 0.0})
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                gt = COCO()
                gt.dataset = {"info": {}, "images": self.images, "annotations": self.gts, "categories": [{"id": 1, "name": "cell"}]}
                gt.createIndex()
                dt = gt.loadRes([dict(d) for d in self.dts])
                ev = COCOeval(gt, dt, iou_type)
                ev.params.useCats = 0
                ev.params.maxDets = [1, 10, self.max_dets]
                ev.evaluate()
                ev.accumulate()
            # read the precision table directly: summarize() hard-codes maxDets=100 for AP@[.5:.95]
            prec = ev.eval["precision"][:, :, :, 0, -1]  # [IoU thr, recall, class, area=all, maxDets=max_dets]
            out.update({f"{prefix}_AP": _mean_defined(prec), f"{prefix}_AP50": _mean_defined(prec[0]),
                        f"{prefix}_AP75": _mean_defined(prec[5])})
        return out


def _mean_defined(p: np.ndarray) -> float:
    """Mean of pycocotools precision entries, ignoring its -1 for 'undefined'."""
    p = p[p > -1]
    return float(p.mean()) if p.size else 0.0


class Scorer:
    """Scores images one by one and pools them: the one implementation behind :func:`evaluate_method` and
    the validation during training (:func:`hemaseg.engine.evaluate`).

    Per image (:meth:`add`, a row): the union IoU and Dice, cell counts, matches at IoU 0.5 and, given
    ``nuclei``, their Dice and IoU; over the images (:meth:`summary`): the means, instance matching at each
    of ``thresholds`` (pooled counts) and, with ``max_dets``, COCO mask and box AP.

    >>> t = Cells.from_labels(np.array([[1, 1, 0], [0, 0, 2]])); p = Cells.from_labels(np.array([[1, 1, 0], [0, 0, 0]]))
    >>> s = Scorer((0.5,), max_dets=None); row = s.add(t, p)
    >>> round(row["iou"], 3), row["tp_50"], s.summary()["recall_50"]
    (0.667, 1, 0.5)
    """

    def __init__(self, thresholds=THRESHOLDS, max_dets: int | None = 1000):
        self.rows: list[dict] = []
        self.thresholds = tuple(thresholds)
        self.counter = MatchCounter(self.thresholds)
        self.coco = CocoAccumulator(max_dets) if max_dets else None

    def add(self, truth: Cells, found: Cells, *, image: str = "", seconds: float = float("nan"),
            extra: dict | None = None, nuclei: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
        """Score one image's ``found`` cells against its ``truth``; ``nuclei``: (true, found) nuclei as
        ``H x W`` masks (or mask stacks). ``extra`` items go in the row after ``seconds``. Returns the row."""
        iou = iou_matrix_cells(truth, found)
        self.counter.add(iou)
        if self.coco is not None:
            self.coco.add(truth, found)
        t, p = truth.union(), found.union()
        matched = matched_ious(iou, 0.5)
        tp, n = len(matched), len(truth) + len(found)
        row = {"image": image, "iou": semantic_iou(t, p), "dice": dice(t, p), "n_true": len(truth), "n_pred": len(found),
               "tp_50": tp, "f1_50": 2 * tp / n if n else float("nan"), "matched_iou_sum_50": float(matched.sum()),
               "seconds": seconds, **(extra or {})}
        if nuclei is not None:
            row["nucleus_dice"], row["nucleus_iou"] = dice(*nuclei), semantic_iou(*nuclei)
        self.rows.append(row)
        return row

    def summary(self) -> dict:
        """Means over the images scored (NaN ones - nothing to score - left out), pooled matching, COCO AP."""
        rows = self.rows
        out = {"mean_iou": mean_of(r["iou"] for r in rows), "mean_dice": mean_of(r["dice"] for r in rows),
               "seconds_per_image": mean_of(r["seconds"] for r in rows)}
        for key in ("nucleus_dice", "nucleus_iou"):
            values = [r[key] for r in rows if key in r]
            if values:
                out[key] = sum(values) / len(values)
        out["matching"] = {f"{th:.2f}": self.counter.result(th).as_dict() for th in self.thresholds}
        m50 = out["matching"]["0.50"]
        out.update({"f1_50": m50["f1"], "precision_50": m50["precision"], "recall_50": m50["recall"],
                    "pq_50": m50["panoptic_quality"]})
        if self.coco is not None:
            out.update(self.coco.result())
        out["nothing_scored"] = sum(1 for r in rows if not r["n_true"] and not r["n_pred"])
        return out


def load_truth(source: DatasetSource, ref: SampleRef) -> tuple[torch.Tensor, Cells]:
    """A sample's image and its true cells, sparse: label-image annotations never become ``N x H x W``
    masks, so an annotated image of any size and count of cells is scored in bounded memory (COCO
    annotations, which may overlap, go through the dense target)."""
    if ref.format == "coco":
        image, target = load_sample(ref, source.classes, coco=source.coco)
        h, w = image.shape[1:]
        return image, Cells.from_result({**target, "scores": np.ones(len(target["masks"]))}, h, w)
    image = image_to_tensor(read_image(ref.image))
    ann = read_label_annotation(ref, source.classes, tuple(image.shape[1:]))
    return image, Cells.from_labels(ann.labels, ann.ids, ann.classes, ann.nuclei)


def evaluate_method(method: Method, source: DatasetSource, refs: list[SampleRef], cfg: SegmentConfig = SegmentConfig(),
                    max_dets: int = 1000, n_figures: int = 3, progress: bool = True,
                    predictions: dict[str, Cells] | None = None) -> Evaluation:
    """Run ``method`` on ``refs`` and score it against their ground truth (see the module docstring).
    ``predictions`` (image path -> cells, e.g. ``segment_files(..., keep_cells=True).cells``) are the
    method's results already computed: scored as they are, the method is not run again.

    Memory stays bounded: truth and predictions are sparse cells (:func:`load_truth`, the tiled
    :func:`~hemaseg.predict.run_method`), reduced to counts and RLE as they come, and only the images of
    the ``n_figures`` worst and best IoU are kept for the figures.
    """
    if not refs:
        raise DataError(f"{source.root}: no images to score (the list of images to evaluate is empty)")
    scorer = Scorer(THRESHOLDS, max_dets)
    ev = Evaluation(method.name, scorer.rows, {})
    kept: dict[int, tuple] = {}  # image index -> (image, truth labels, predicted labels)
    for i in tqdm(range(len(refs)), desc=f"evaluate ({method.name})", disable=not progress):
        try:
            image, truth = load_truth(source, refs[i])
            t0 = time.perf_counter()
            cells, scale = segment_image(method, image, cfg) if predictions is None else (_own(method, predictions[str(refs[i].image)]), None)
            seconds = time.perf_counter() - t0
        except (DataError, OSError, ValueError) as err:  # one bad image or annotation must not abort the scoring
            ev.failed.append((str(refs[i].image), f"{err.__class__.__name__}: {err}"))
            continue
        extra = {}
        if scale is not None and scale.source != "none":
            extra = {"scale": scale.source, "pixel_size_um": scale.pixel_size, "scale_trusted": scale.confident}
        scorer.add(truth, cells, image=str(refs[i].image), seconds=seconds, extra=extra,
                   nuclei=_nuclei_pair(method, image, truth, cells, cfg))
        kept[len(scorer.rows) - 1] = (tensor_to_image(image), truth.label_image(), cells.label_image())
        by_iou = sorted(kept, key=lambda k: _order(scorer.rows[k]["iou"]))
        for k in by_iou[n_figures:-n_figures or None]:
            del kept[k]
    ev.figures = kept
    rows = scorer.rows
    summary = {"method": method.name, "images": len(rows), "failed": len(ev.failed), **scorer.summary()}
    if summary["nothing_scored"]:
        logging.getLogger(__name__).warning(
            "%s: %d of %d images have no true and no found cell: their scores are n/a, left out of the means",
            method.name, summary["nothing_scored"], len(rows))
    ev.summary = summary
    return ev


def _nuclei_pair(method: Method, image: torch.Tensor, truth: Cells, cells: Cells, cfg: SegmentConfig):
    """``(true, found)`` nuclei as ``H x W`` masks where the truth has nuclei and nuclei are asked for, else
    None. Cells without nuclei of their own get them split or learned (:func:`hemaseg.nuclei.cell_nuclei`)."""
    if cfg.nuclei == "off" or truth.nuclei is None or not any(n.any() for n in truth.nuclei):
        return None
    if cells.nuclei is None:
        names = [method.classes[k - 1] for k in cells.labels.tolist()]
        cells.nuclei = cell_nuclei(image, cells, names, learned=cfg.nuclei == "auto")
    return truth.union(nuclei=True), cells.union(nuclei=True)


def _own(method: Method, cells: Cells) -> Cells:
    """The ``method``'s own cells of ``cells`` found by ``segment``: not the red cells and platelets it adds
    (their labels follow the method's classes), which the method is not scored on."""
    return cells.select(cells.labels <= len(method.classes)) if len(cells) else cells


def _order(iou: float) -> float:
    """Sort key of an image's IoU: an image with no true and no found cell (NaN) ranks as right."""
    return 1.0 if math.isnan(iou) else iou


def write_evaluation(ev: Evaluation, out: str | Path, n_figures: int = 3) -> dict[str, Path]:
    """``per_image.csv``, ``summary.json`` and figures (image | truth | prediction) of the worst and best
    images by IoU, in ``out``. Returns the paths written, figures under ``figures``-prefixed keys."""
    out = Path(out)
    written = {"per_image": write_text(out / "per_image.csv", csv_text(ev.per_image, list(ev.per_image[0]) if ev.per_image else ["image"])),
               "summary": write_json(out / "summary.json", ev.summary)}
    if ev.failed:
        written["failed"] = write_text(out / "failed.csv", csv_text([{"image": f, "error": e} for f, e in ev.failed], ["image", "error"]))
    order = sorted(ev.figures, key=lambda i: _order(ev.per_image[i]["iou"]))
    picks = [("worst", i) for i in order[:n_figures]] + [("best", i) for i in order[::-1][:n_figures]]
    for rank, (kind, i) in enumerate(picks):
        img, t, p = ev.figures[i]
        panels = [img, overlay(img, labels_to_masks(t)[0], text=False), overlay(img, labels_to_masks(p)[0], text=False)]
        name = Path(ev.per_image[i]["image"]).stem
        fig = side_by_side(panels, ["image", "truth", f"{ev.method} IoU {ev.per_image[i]['iou']:.3f}"])
        written[f"figure_{kind}_{rank}"] = write_image(out / "figures" / f"{kind}_{rank}_{name}.png", fig)
    return written
