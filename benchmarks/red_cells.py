"""Red cells and platelets in whole fields (issue 21): the call ``segment --red-cells`` makes - the bundled
model's white cells and scale estimate, then :func:`hemaseg.segment.with_smear_cells` and the red cells'
morphology - against the truth each source has.

    .venv/bin/python benchmarks/red_cells.py --out runs/red_cells

* chula (the 62 held-out fields of benchmarks/real_sources.py, 640x480): **point recall** - each
  annotated point inside a found red cell, one point per cell (two points in one cell: one is missed),
  per morphology class and over all; **count error** |found - points| / points per field, only on the
  :data:`LABELLED_THROUGHOUT` fields (checked by eye: on most fields the annotators pointed at the
  abnormal cells only, so their points are no count): the count ``segment`` reports (whole cells, and
  cells cut by the frame with at least :data:`hemaseg.redcells.FRAME_SHARE` of a cell in view:
  :func:`hemaseg.redcells.counted_cells`), beside all found red cells, the whole ones only, and the cells
  (by their centre) against the points of the inner frame one red cell in from each edge, where no
  convention for cells cut by the frame matters (the finder's own error); the count error's parts
  (:func:`count_terms`: whole cells against their points, cut cells counted against the points in cut
  cells, points in no cell); the **ICSH grade** of each class per field from the counted cells' calls
  against the grade of the experts' points (:func:`grade_agreement`); **morphology** - the class the
  bundled classifier gives each found red cell that holds a point,
  against the point's (uncategorised left out): balanced accuracy over all classes and over those with
  >= 30 cells, recall per class, confusion matrix;
* bccd (the 58 held-out fields): **platelet** recall and precision at box IoU >= 0.3 against BCCD's
  platelet boxes (one to one); red-cell box recall (BCCD boxes some red cells only: no precision);
* pbc (every 4th held-out crop, 360x363 CellaVision, another lab): **red-cell count error** per crop
  against its YOLO boxes of every red cell. These annotators box every visible piece of a cell, slivers
  at the frame too, so every found red cell is compared (the ``all`` count), beside ``segment``'s count;
  and red-cell box recall at IoU 0.3;
* every source: the morphology calls of its counted red cells pooled (:class:`Calls`): the share of each
  class, the ICSH grades a case of them all would read, and the share the classifier is unsure of - on
  another lab's images (no red-cell classes to score against; PBC's donors are healthy) how far it strays;
* painted (``hemaseg synth`` whole fields, exact truth, three magnifications): count error of red cells
  and platelets;
* seconds per 640x480 field: the whole call (white cells, scale, red cells, platelets, morphology), the
  red-cell and platelet step and the morphology step alone; with the true pixel size (``--pixel-size``,
  benchmarks/real_sources.py) beside the estimate.

Chula RBC-12 (Naruenatthanaset et al. 2021, MIT); BCCD (Shenggan 2017, MIT).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from real_sources import PIXEL_SIZE, folder, held_out, pbc_classes  # noqa: E402
from frame_share import truths_per_cell  # noqa: E402

from hemaseg.data.boxes import box_iou, read_voc, read_yolo  # noqa: E402
from hemaseg.data.contract import image_to_rgb8, image_to_tensor  # noqa: E402
from hemaseg.data.io import read_image  # noqa: E402
from hemaseg.metrics import matched_ious  # noqa: E402
from hemaseg.model import default_model  # noqa: E402
from hemaseg.cells import Cells  # noqa: E402
from hemaseg.predict import ModelMethod, SegmentConfig, segment_image  # noqa: E402
from hemaseg.redcells import (GRADES, ICSH_GRADES, MORPHOLOGY_CLASSES, PLATELET, RED_CELL, counted_cells, cut_by_frame,  # noqa: E402
                              find_smear_cells, morphology_grades, red_morphology, under_white_cells, unsure_share)
from hemaseg.segment import Job, typing_pixel_size, with_smear_cells  # noqa: E402
from hemaseg.scale import RED_CELL_UM  # noqa: E402

CHULA_CLASSES = ("normal", "macrocyte", "microcyte", "spherocyte", "target", "stomatocyte", "ovalocyte", "teardrop",
                 "burr", "schistocyte", "uncategorised", "hypochromia", "elliptocyte")
# held-out Chula fields on which every whole red cell carries a point (checked by eye on contact sheets of
# the 62 held-out fields, before any count was computed); on the others only some cells are pointed at
LABELLED_THROUGHOUT = ("4", "13", "44", "102", "103", "245", "254", "255", "259", "274", "275", "278", "300", "305",
                       "310", "311", "329", "331", "386", "388")
CLASSES = (RED_CELL, PLATELET)


@dataclasses.dataclass
class Field:
    """What ``segment --red-cells`` finds in one field, as :func:`smear_cells` runs it."""

    red: Cells
    platelets: Cells
    morphology: list[str]  # per red cell
    confidence: list[float]  # the classifier's probability of each red cell's class
    seconds: float  # all of it: white cells, scale, red cells and platelets, morphology
    seconds_red: float  # the red-cell and platelet step
    seconds_morphology: float
    red_px: float  # the red-cell diameter (px) it worked at
    counted: np.ndarray  # per red cell: in segment's count (counted_cells of all the field's cells, white ones too)
    cut: np.ndarray  # per red cell: cut by the frame or partly under a white cell (counted only with most of it in view)
    under: np.ndarray  # per red cell: next to a white cell (hemaseg.redcells.under_white_cells)


def smear_cells(job: Job, path: Path) -> Field:
    """The call ``segment --red-cells`` makes on one field (:func:`hemaseg.segment.with_smear_cells`, then
    :func:`hemaseg.redcells.red_morphology`), timed step by step."""
    raw = read_image(path)
    t0 = time.perf_counter()
    white, scale = segment_image(job.method, image_to_tensor(raw), job.cfg)
    t1 = time.perf_counter()
    cells = with_smear_cells(job, raw, white, scale)
    t2 = time.perf_counter()
    names = [job.classes[i - 1] for i in cells.labels.tolist()]
    px = typing_pixel_size(job.method, scale, job.cfg)
    calls = red_morphology(job.morphology, image_to_rgb8(raw), cells, names, px)
    t3 = time.perf_counter()
    is_red = np.array([n == RED_CELL for n in names], bool)
    counted, under = counted_cells(cells, names), under_white_cells(cells, names)
    cut = cut_by_frame(cells) | under
    return Field(cells.select(is_red), cells.select(np.array([n == PLATELET for n in names], bool)),
                 [c["morphology"] for c, r in zip(calls, is_red) if r], [c["morphology_confidence"] for c, r in zip(calls, is_red) if r],
                 t3 - t0, t2 - t1, t3 - t2, RED_CELL_UM / px, counted[is_red], cut[is_red], under[is_red])


def morphology_scores(truth: list[str], said: list[str]) -> dict:
    """Balanced accuracy (over every class, and over the classes with >= 30 cells), recall per class and the
    confusion matrix (truth -> said -> cells) of the found red cells' classes against the experts'."""
    from hemaseg.celltypes import type_scores

    sc = type_scores(truth, said)
    counts = {c: truth.count(c) for c in dict.fromkeys(truth)}
    big = [c for c in MORPHOLOGY_CLASSES if counts.get(c, 0) >= 30]
    sc["balanced_accuracy_classes_30"] = round(float(np.mean([sc["per_type"][c]["recall"] for c in big])), 3) if big else None
    sc["classes_30"] = big
    return sc


def count_terms(counts: list[dict]) -> dict:
    """The count error of ``segment``'s count split into its parts, per field as shares of the points
    (mean and mean absolute value over the fields): ``whole`` - whole found cells against the points in
    them (the finder: cells the experts left out, artefacts, cells split in two); ``cut`` - cut cells
    counted (:func:`hemaseg.redcells.counted_cells`) against the points in cut cells (how the convention
    matches each field's annotator); ``missed`` - points in no found cell (always negative)."""
    if not counts:
        return {}
    terms = {"whole": [(c["found_whole"] - c["points_whole"]) / c["points"] for c in counts],
             "cut": [(c["counted_cut"] - c["points_cut"]) / c["points"] for c in counts],
             "missed": [-(c["points"] - c["points_whole"] - c["points_cut"]) / c["points"] for c in counts]}
    out = {f"count_term_{k}": {"bias": round(float(np.mean(v)), 4), "mean_abs": round(float(np.mean(np.abs(v))), 4)} for k, v in terms.items()}
    cut_shares = [(c["counted_cut"] - c["points_cut"]) / c["points"] for c in counts]
    out["count_error_if_whole_exact"] = round(float(np.mean(np.abs(np.add(cut_shares, terms["missed"])))), 4)
    return out


def field_grades(called: list[str], pointed: list[str]) -> dict:
    """Per graded class (:data:`hemaseg.redcells.ICSH_GRADES`): ``[experts' grade, grade called]`` of one
    field - the ICSH grade of the class's share of the experts' points (uncategorised left out) and of the
    counted red cells' morphology calls, as ``hemaseg report`` grades a case."""
    truth = {r["morphology"]: r["grade"] for r in morphology_grades(pointed)}
    said = {r["morphology"]: r["grade"] for r in morphology_grades(called)}
    return {c: [truth[c], said[c]] for c in ICSH_GRADES}


def grade_agreement(counts: list[dict]) -> dict:
    """Per graded class, on the fields pointed throughout: the share of fields whose called ICSH grade
    equals the experts' (``exact``) or lies one grade off (``within_one``), how many fields the experts'
    points grade 1+ or more (``graded``) and the calls do (``called_graded``), how many the calls grade
    higher (``over``) or lower (``under``); the same over every class (``all``) and over the classes graded
    1+ in some field by either (``graded_classes``: the others agree trivially)."""
    if not counts:
        return {}
    out = {}
    for c in ICSH_GRADES:
        pairs = [(GRADES.index(f["grades"][c][0]), GRADES.index(f["grades"][c][1])) for f in counts]
        d = np.array([abs(a - b) for a, b in pairs])
        out[c] = {"exact": round(float((d == 0).mean()), 3), "within_one": round(float((d <= 1).mean()), 3),
                  "graded": sum(a > 0 for a, _ in pairs), "called_graded": sum(b > 0 for _, b in pairs),
                  "over": sum(b > a for a, b in pairs), "under": sum(b < a for a, b in pairs)}
    for key, classes in (("all", list(ICSH_GRADES)), ("graded_classes", [c for c in ICSH_GRADES if out[c]["graded"] or out[c]["called_graded"]])):
        d = np.array([abs(GRADES.index(f["grades"][c][0]) - GRADES.index(f["grades"][c][1])) for c in classes for f in counts])
        out[key] = {"exact": round(float((d == 0).mean()), 3) if len(d) else None,
                    "within_one": round(float((d <= 1).mean()), 3) if len(d) else None, "classes": len(classes)}
    return out


def chula(job: Job, limit: int | None) -> dict:
    per_class = {c: [0, 0] for c in CHULA_CLASSES}
    counts, seconds, step, step_morph, red_pxs, truth, said = [], [], [], [], [], [], []
    calls = Calls()
    for path in held_out("chula")[:limit]:
        f = smear_cells(job, path)
        calls.add(f)
        red = f.red
        seconds.append(f.seconds), step.append(f.seconds_red), step_morph.append(f.seconds_morphology), red_pxs.append(f.red_px)
        pts = np.loadtxt(folder("chula") / "labels" / f"{path.stem}.txt", ndmin=2).astype(int)
        lab = red.label_image()
        ids = lab[pts[:, 1].clip(0, lab.shape[0] - 1), pts[:, 0].clip(0, lab.shape[1] - 1)]
        seen: set[int] = set()
        for i, c in zip(ids.tolist(), pts[:, 2].tolist()):
            per_class[CHULA_CLASSES[c]][1] += 1
            if i and i not in seen:
                seen.add(i)
                per_class[CHULA_CLASSES[c]][0] += 1
                if CHULA_CLASSES[c] != "uncategorised":  # the found cell's class against the experts'
                    truth.append(CHULA_CLASSES[c]), said.append(f.morphology[i - 1])
        if path.stem in LABELLED_THROUGHOUT:
            h, w = lab.shape
            m = f.red_px  # inner frame: one red cell in from each edge, where no convention for cut cells matters
            inside = lambda y, x: (y >= m) & (y < h - m) & (x >= m) & (x < w - m)  # noqa: E731
            centres = np.array([(b[1] + np.nonzero(k)[0].mean(), b[0] + np.nonzero(k)[1].mean()) for b, k in zip(red.boxes, red.masks)]).reshape(-1, 2)
            cut, counted = f.cut, f.counted
            per = truths_per_cell(red, pts[:, 1], pts[:, 0])
            counts.append({"field": path.stem, "points": len(pts), "found": len(red), "found_whole": int((~cut).sum()),
                           "counted": int(counted.sum()),
                           "points_inner": int(inside(pts[:, 1], pts[:, 0]).sum()), "found_inner": int(inside(centres[:, 0], centres[:, 1]).sum()),
                           # counted - points = whole cells - their points + counted cut cells - their points - points in no cell
                           "points_whole": int(per[~cut].sum()), "points_cut": int(per[cut].sum()), "counted_cut": int((counted & cut).sum()),
                           "grades": field_grades([f.morphology[i] for i in np.nonzero(counted)[0]],
                                                  [CHULA_CLASSES[c] for c in pts[:, 2] if CHULA_CLASSES[c] != "uncategorised"])})
    hit, total = (sum(v[i] for v in per_class.values()) for i in (0, 1))
    return {"fields": len(seconds), "points": total, "point_recall": hit / total,
            "recall_per_class": {c: {"points": n, "recall": round(k / n, 3) if n else None} for c, (k, n) in per_class.items()},
            "count_error": float(np.mean([abs(c["counted"] - c["points"]) / c["points"] for c in counts])) if counts else None,
            "count_bias": float(np.mean([(c["counted"] - c["points"]) / c["points"] for c in counts])) if counts else None,
            "count_error_inner": float(np.mean([abs(c["found_inner"] - c["points_inner"]) / c["points_inner"] for c in counts])) if counts else None,
            "count_bias_inner": float(np.mean([(c["found_inner"] - c["points_inner"]) / c["points_inner"] for c in counts])) if counts else None,
            "count_error_all": float(np.mean([abs(c["found"] - c["points"]) / c["points"] for c in counts])) if counts else None,
            "count_error_whole": float(np.mean([abs(c["found_whole"] - c["points"]) / c["points"] for c in counts])) if counts else None,
            "count_bias_whole": float(np.mean([(c["found_whole"] - c["points"]) / c["points"] for c in counts])) if counts else None,
            **count_terms(counts), "grades": grade_agreement(counts),
            "counts": counts, "seconds_per_field": float(np.mean(seconds)), "seconds_red_step": float(np.mean(step)),
            "seconds_morphology_step": float(np.mean(step_morph)), "red_cell_px_median": float(np.median(red_pxs)),
            "morphology": morphology_scores(truth, said), "morphology_calls": calls.summary()}


class Calls:
    """The morphology calls of a source's counted red cells, pooled: their classes, the share of each, the
    ICSH grades a case of them all would read, and the share the classifier is unsure of
    (:func:`hemaseg.redcells.unsure_share`) - on another lab's images, where no red cell has a class to
    score against, how far the classifier strays from what it learned (PBC's donors are healthy)."""

    def __init__(self):
        self.calls: list[str] = []
        self.confidence: list[float] = []
        self.per_field: list[float] = []  # the share unsure of, per field with at least 5 counted red cells
        self.next_to_white: list[tuple[bool, str]] = []  # every counted red cell: next to a white cell?, its call

    def add(self, f: Field) -> None:
        keep = f.counted
        self.calls += [m for m, k in zip(f.morphology, keep) if k]
        conf = [c for c, k in zip(f.confidence, keep) if k]
        self.next_to_white += [(bool(u), m) for u, m, k in zip(f.under, f.morphology, keep) if k]
        self.confidence += conf
        if len(conf) >= 5:
            self.per_field.append(unsure_share(conf, least=5))

    def summary(self) -> dict:
        grades = morphology_grades(self.calls)
        q = np.percentile(self.per_field, [50, 95, 100]).round(2).tolist() if self.per_field else None
        schisto = {side: [m == "schistocyte" for u, m in self.next_to_white if u == (side == "next_to_white")]
                   for side in ("next_to_white", "elsewhere")}
        return {"cells": len(self.calls), "unsure_share": unsure_share(self.confidence), "unsure_per_field_median_95th_max": q,
                "schistocyte_share": {k: [len(v), round(float(np.mean(v)), 3) if v else None] for k, v in schisto.items()},
                "percent": {r["morphology"]: r["percent"] for r in grades},
                "graded": {r["morphology"]: r["grade"] for r in grades if r["grade"] not in ("", "none")}}


def bccd(job: Job, limit: int | None) -> dict:
    tp = n_true = n_found = red_hit = red_true = 0
    calls = Calls()
    for path in held_out("bccd")[:limit]:
        f = smear_cells(job, path)
        calls.add(f)
        red, plt = f.red, f.platelets
        boxes, _ = read_voc(folder("bccd") / "annotations" / f"{path.stem}.xml")
        truth = boxes.only({"Platelets"}).xyxy
        matched = matched_ious(box_iou(truth, plt.boxes.astype(np.float64)), 0.3) if len(truth) and len(plt) else np.zeros(0)
        tp, n_true, n_found = tp + len(matched), n_true + len(truth), n_found + len(plt)
        rb = boxes.only({"RBC"}).xyxy
        if len(rb):
            red_hit += len(matched_ious(box_iou(rb, red.boxes.astype(np.float64)), 0.3)) if len(red) else 0
            red_true += len(rb)
    return {"platelets_true": n_true, "platelets_found": n_found, "platelet_recall": tp / n_true if n_true else None,
            "platelet_precision": tp / n_found if n_found else None, "red_box_recall": red_hit / red_true if red_true else None,
            "morphology_calls": calls.summary()}


def pbc(job: Job, limit: int | None) -> dict:
    classes = pbc_classes()
    rows, hit = [], 0
    calls = Calls()
    for path in held_out("pbc")[::4][:limit]:
        f = smear_cells(job, path)
        calls.add(f)
        red = f.red
        truth = read_yolo(path.parent / "labels" / f"{path.stem}.txt", classes, red.height, red.width).only({RED_CELL}).xyxy
        if not len(truth):
            continue
        hit += len(matched_ious(box_iou(truth, red.boxes.astype(np.float64)), 0.3)) if len(red) else 0
        rows.append({"boxes": len(truth), "found": len(red), "counted": int(f.counted.sum())})
    err = lambda k: float(np.mean([abs(r[k] - r["boxes"]) / r["boxes"] for r in rows])) if rows else None  # noqa: E731
    bias = lambda k: float(np.mean([(r[k] - r["boxes"]) / r["boxes"] for r in rows])) if rows else None  # noqa: E731
    total = sum(r["boxes"] for r in rows)
    return {"crops": len(rows), "red_boxes": total, "count_error_all": err("found"), "count_bias_all": bias("found"),
            "count_error_counted": err("counted"), "count_bias_counted": bias("counted"),
            "red_box_recall": hit / total if total else None, "morphology_calls": calls.summary()}


def painted(limit: int | None) -> dict:
    from hemaseg.data.formats import load_sample, open_dataset
    from hemaseg.data.synthetic import SynthConfig, write_dataset

    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, scale in enumerate((0.75, 1.0, 1.5)):
            base = SynthConfig.wbc_field()  # a 640x480 field seen magnified: the same cells, each wider
            cfg = dataclasses.replace(base, height=round(480 * scale), width=round(640 * scale),
                                      red_radius=tuple(r * scale for r in base.red_radius),
                                      white_radius=tuple(r * scale for r in base.white_radius),
                                      platelet_radius=tuple(r * scale for r in base.platelet_radius))
            data = write_dataset(Path(tmp) / f"s{k}", limit or 6, cfg, seed=10 + k)
            source = open_dataset(data)
            for ref in source.refs:
                image, target = load_sample(ref, source.classes)
                names = [source.classes[i - 1] for i in target["labels"].tolist()]
                red_px = 2 * np.median([np.sqrt(float(m.sum()) / np.pi) for m, n in zip(target["masks"], names) if n == RED_CELL])
                white = (target["masks"][[n == "white_cell" for n in names]].sum(0) > 0).numpy() if "white_cell" in names else None
                found = find_smear_cells(image_to_rgb8(image.permute(1, 2, 0).numpy()), float(red_px), exclude=white, classes=CLASSES)
                rows.append({"scale": scale, "red_true": names.count(RED_CELL), "red_found": int((found.labels == 1).sum()),
                             "platelets_true": names.count(PLATELET), "platelets_found": int((found.labels == 2).sum())})
    err = lambda a, b: float(np.mean([abs(r[b] - r[a]) / r[a] for r in rows if r[a]]))  # noqa: E731
    return {"fields": len(rows), "red_count_error": err("red_true", "red_found"),
            "platelet_count_error": err("platelets_true", "platelets_found"), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=None, help="at most this many fields per source (a quick look)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    method = ModelMethod.from_checkpoint(default_model(), SegmentConfig())
    result = {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
    for true_scale in (False, True):
        key = "true_scale" if true_scale else "default_call"
        jobs = {s: Job.of(args.out, method, SegmentConfig(smear_cells=True, pixel_size=PIXEL_SIZE[s] if true_scale else None))
                for s in ("chula", "bccd", "pbc")}  # true scale: as --pixel-size gives it
        result[key] = {"chula": chula(jobs["chula"], args.limit), "bccd": bccd(jobs["bccd"], args.limit),
                       "pbc": pbc(jobs["pbc"], args.limit)}
        print(key, json.dumps({s: {k: v for k, v in r.items() if k not in ("counts", "recall_per_class", "morphology", "grades", "morphology_calls")}
                               for s, r in result[key].items()}), flush=True)
        m = result[key]["chula"]["morphology"]
        print(key, "morphology", json.dumps({k: m[k] for k in ("cells", "accuracy", "balanced_accuracy", "balanced_accuracy_classes_30")}),
              json.dumps({c: v["recall"] for c, v in m["per_type"].items()}), flush=True)
        for s in ("chula", "pbc", "bccd"):
            print(key, s, "morphology calls of the counted red cells:", json.dumps(result[key][s]["morphology_calls"]), flush=True)
        print(key, "ICSH grades (exact, within one, fields graded by the points / by the calls)",
              json.dumps({c: [v["exact"], v["within_one"], v.get("graded"), v.get("called_graded")] for c, v in result[key]["chula"]["grades"].items()}), flush=True)
    result["painted"] = painted(args.limit)
    print("painted", json.dumps({k: v for k, v in result["painted"].items() if k != "rows"}))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "red_cells.json").write_text(json.dumps(result, indent=2) + "\n")
    print("recall per class (default call):", json.dumps(result["default_call"]["chula"]["recall_per_class"]))


if __name__ == "__main__":
    main()
