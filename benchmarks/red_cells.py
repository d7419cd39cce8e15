"""Red cells and platelets in whole fields (issue 21): the default call - the bundled model's white cells
and scale estimate, then :func:`hemaseg.redcells.find_smear_cells` - against the truth each source has.

    .venv/bin/python benchmarks/red_cells.py --out runs/red_cells

* chula (the 62 held-out fields of benchmarks/real_sources.py, 640x480): **point recall** - each
  annotated point inside a found red cell, one point per cell (two points in one cell: one is missed),
  per morphology class and over all; **count error** |found - points| / points per field, only on the
  :data:`LABELLED_THROUGHOUT` fields (checked by eye: on most fields the annotators pointed at the
  abnormal cells only, so their points are no count): all found red cells, and those not cut by the
  frame;
* bccd (the 58 held-out fields): **platelet** recall and precision at box IoU >= 0.3 against BCCD's
  platelet boxes (one to one); red-cell box recall (BCCD boxes some red cells only: no precision);
* painted (``hemaseg synth`` whole fields, exact truth, three magnifications): count error of red cells
  and platelets;
* seconds per 640x480 field: the default call (white cells, scale, red cells, platelets) and the red-cell
  and platelet step alone; with the true pixel size (benchmarks/real_sources.py) beside the estimate.

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
from real_sources import PIXEL_SIZE, folder, held_out  # noqa: E402

from hemaseg.data.boxes import box_iou, read_voc  # noqa: E402
from hemaseg.data.contract import image_to_rgb8, image_to_tensor  # noqa: E402
from hemaseg.data.io import read_image  # noqa: E402
from hemaseg.metrics import matched_ious  # noqa: E402
from hemaseg.model import default_model  # noqa: E402
from hemaseg.predict import ModelMethod, SegmentConfig, segment_image  # noqa: E402
from hemaseg.redcells import PLATELET, RED_CELL, find_smear_cells  # noqa: E402
from hemaseg.scale import RED_CELL_UM  # noqa: E402

CHULA_CLASSES = ("normal", "macrocyte", "microcyte", "spherocyte", "target", "stomatocyte", "ovalocyte", "teardrop",
                 "burr", "schistocyte", "uncategorised", "hypochromia", "elliptocyte")
# held-out Chula fields on which every whole red cell carries a point (checked by eye on contact sheets of
# the 62 held-out fields, before any count was computed); on the others only some cells are pointed at
LABELLED_THROUGHOUT = ("4", "13", "44", "102", "103", "245", "254", "255", "259", "274", "275", "278", "300", "305",
                       "310", "311", "329", "331", "386", "388")
CLASSES = (RED_CELL, PLATELET)


def smear_cells(method, image: torch.Tensor, cfg: SegmentConfig, pixel_size: float | None = None):
    """The default call on one field: ``(red cells, platelets, white cells, seconds of all, seconds of the
    red-cell step, red-cell px used)``. ``pixel_size``: the true one instead of the estimate."""
    t0 = time.perf_counter()
    white, scale = segment_image(method, image, cfg)
    red_px = RED_CELL_UM / pixel_size if pixel_size else scale.red_cell_px or RED_CELL_UM / 0.1887
    rgb = image_to_rgb8(image.permute(1, 2, 0).numpy())
    t1 = time.perf_counter()
    found = find_smear_cells(rgb, red_px, exclude=white.union(), classes=CLASSES)
    t2 = time.perf_counter()
    return found.select(found.labels == 1), found.select(found.labels == 2), white, t2 - t0, t2 - t1, red_px


def chula(method, cfg: SegmentConfig, true_scale: bool, limit: int | None) -> dict:
    per_class = {c: [0, 0] for c in CHULA_CLASSES}
    counts, seconds, step, red_pxs = [], [], [], []
    for path in held_out("chula")[:limit]:
        image = image_to_tensor(read_image(path))
        red, _, _, s, s_red, red_px = smear_cells(method, image, cfg, PIXEL_SIZE["chula"] if true_scale else None)
        seconds.append(s), step.append(s_red), red_pxs.append(red_px)
        pts = np.loadtxt(folder("chula") / "labels" / f"{path.stem}.txt", ndmin=2).astype(int)
        lab = red.label_image()
        ids = lab[pts[:, 1].clip(0, lab.shape[0] - 1), pts[:, 0].clip(0, lab.shape[1] - 1)]
        seen: set[int] = set()
        for i, c in zip(ids.tolist(), pts[:, 2].tolist()):
            per_class[CHULA_CLASSES[c]][1] += 1
            if i and i not in seen:
                seen.add(i)
                per_class[CHULA_CLASSES[c]][0] += 1
        if path.stem in LABELLED_THROUGHOUT:
            h, w = lab.shape
            b = red.boxes
            whole = int(((b[:, 0] > 0) & (b[:, 1] > 0) & (b[:, 2] < w) & (b[:, 3] < h)).sum())
            counts.append({"field": path.stem, "points": len(pts), "found": len(red), "found_whole": whole})
    hit, total = (sum(v[i] for v in per_class.values()) for i in (0, 1))
    return {"fields": len(seconds), "points": total, "point_recall": hit / total,
            "recall_per_class": {c: {"points": n, "recall": round(k / n, 3) if n else None} for c, (k, n) in per_class.items()},
            "count_error_all": float(np.mean([abs(c["found"] - c["points"]) / c["points"] for c in counts])) if counts else None,
            "count_error_whole": float(np.mean([abs(c["found_whole"] - c["points"]) / c["points"] for c in counts])) if counts else None,
            "count_bias_whole": float(np.mean([(c["found_whole"] - c["points"]) / c["points"] for c in counts])) if counts else None,
            "counts": counts, "seconds_per_field": float(np.mean(seconds)), "seconds_red_step": float(np.mean(step)),
            "red_cell_px_median": float(np.median(red_pxs))}


def bccd(method, cfg: SegmentConfig, true_scale: bool, limit: int | None) -> dict:
    tp = n_true = n_found = red_hit = red_true = 0
    for path in held_out("bccd")[:limit]:
        image = image_to_tensor(read_image(path))
        red, plt, _, _, _, _ = smear_cells(method, image, cfg, PIXEL_SIZE["bccd"] if true_scale else None)
        boxes, _ = read_voc(folder("bccd") / "annotations" / f"{path.stem}.xml")
        truth = boxes.only({"Platelets"}).xyxy
        matched = matched_ious(box_iou(truth, plt.boxes.astype(np.float64)), 0.3) if len(truth) and len(plt) else np.zeros(0)
        tp, n_true, n_found = tp + len(matched), n_true + len(truth), n_found + len(plt)
        rb = boxes.only({"RBC"}).xyxy
        if len(rb):
            red_hit += len(matched_ious(box_iou(rb, red.boxes.astype(np.float64)), 0.3)) if len(red) else 0
            red_true += len(rb)
    return {"platelets_true": n_true, "platelets_found": n_found, "platelet_recall": tp / n_true if n_true else None,
            "platelet_precision": tp / n_found if n_found else None, "red_box_recall": red_hit / red_true if red_true else None}


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
    cfg = SegmentConfig()
    method = ModelMethod.from_checkpoint(default_model(), cfg)
    result = {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
    for true_scale in (False, True):
        key = "true_scale" if true_scale else "default_call"
        result[key] = {"chula": chula(method, cfg, true_scale, args.limit), "bccd": bccd(method, cfg, true_scale, args.limit)}
        print(key, json.dumps({s: {k: v for k, v in r.items() if k not in ("counts", "recall_per_class")} for s, r in result[key].items()}), flush=True)
    result["painted"] = painted(args.limit)
    print("painted", json.dumps({k: v for k, v in result["painted"].items() if k != "rows"}))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "red_cells.json").write_text(json.dumps(result, indent=2) + "\n")
    print("recall per class (default call):", json.dumps(result["default_call"]["chula"]["recall_per_class"]))


if __name__ == "__main__":
    main()
