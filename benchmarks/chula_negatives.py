"""Hard negatives for white cells from Chula RBC-12's red-cell points: crops around the red cells a model
takes for white cells, with nothing else in them.

    .venv/bin/python benchmarks/chula_negatives.py --model runs/stageA/run/best.pt --out runs/chula-neg

Chula annotates red cells with a point each, but not all of them (in half of the fields the points cover
under a third of the cells) and no white cell at all, so a field cannot be used whole. The training part
of ``chula-rbc12`` (seed 0 split, benchmarks/real_sources.py) is segmented at Chula's pixel size (0.1887
um/px, its scale bar: no estimate). Each predicted "white cell" with a red-cell point inside its outline is
a red cell: a ``--crop`` px window centred on it becomes a training image with no cell, provided no other
detection (a white cell, or a red cell without a point: unknown) reaches into the window. At most
``--per-field`` windows per field. Written as an instance dataset (``images/NAME_K.png``, empty
``labels/``) with ``report.json``: detections per field, how many sat on red-cell points, windows kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from real_sources import DATA, PIXEL_SIZE, folder  # noqa: E402

from hemaseg.data.formats import list_images  # noqa: E402
from hemaseg.data.io import read_image, write_json  # noqa: E402
from hemaseg.data.synthetic import write_sample  # noqa: E402
from hemaseg.predict import ModelMethod, SegmentConfig, segment_image  # noqa: E402
from hemaseg.scale import split_images  # noqa: E402
from hemaseg.cells import Cells  # noqa: E402


def red_points(path: Path) -> np.ndarray:
    """``Int[N, 2]`` (x, y) of the red-cell points of a Chula field."""
    rows = [line.split() for line in (path.parent / "labels" / f"{path.stem}.txt").read_text().splitlines() if line.strip()]
    return np.array([[round(float(r[0])), round(float(r[1]))] for r in rows], np.int64).reshape(-1, 2)


def on_points(cells: Cells, points: np.ndarray) -> np.ndarray:
    """``bool[N]``: which cells have a point inside their outline."""
    hit = np.zeros(len(cells), bool)
    for i, ((x0, y0, x1, y1), m) in enumerate(zip(cells.boxes, cells.masks)):
        inside = (points[:, 0] >= x0) & (points[:, 0] < x1) & (points[:, 1] >= y0) & (points[:, 1] < y1)
        p = points[inside]
        hit[i] = bool(m[p[:, 1] - y0, p[:, 0] - x0].any()) if len(p) else False
    return hit


def windows(cells: Cells, red: np.ndarray, size: int, height: int, width: int, limit: int) -> list[tuple[int, int, int, int]]:
    """``XYXY`` windows of ``size`` px centred on the cells flagged ``red``, inside the image, that no
    other cell's box reaches into; at most ``limit``."""
    out = []
    others = cells.boxes[~red]
    for x0, y0, x1, y1 in cells.boxes[red]:
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        wx0 = int(np.clip(cx - size // 2, 0, max(0, width - size)))
        wy0 = int(np.clip(cy - size // 2, 0, max(0, height - size)))
        w = (wx0, wy0, min(width, wx0 + size), min(height, wy0 + size))
        clear = not len(others) or not ((others[:, 0] < w[2]) & (others[:, 2] > w[0]) & (others[:, 1] < w[3]) & (others[:, 3] > w[1])).any()
        if clear:
            out.append(w)
        if len(out) == limit:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/chula-neg"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--per-field", type=int, default=3)
    args = ap.parse_args()
    cfg = SegmentConfig(pixel_size=PIXEL_SIZE["chula"])
    method = ModelMethod.from_checkpoint(args.model, cfg)
    train, _ = split_images(list_images([folder("chula", args.data)]), 0.2, 0)
    per_field = []
    for path in train:
        image = read_image(path)
        cells, _ = segment_image(method, image, cfg)
        red = on_points(cells, red_points(path))
        h, w = image.shape[:2]
        chosen = windows(cells, red, args.crop, h, w, args.per_field)
        for k, (x0, y0, x1, y1) in enumerate(chosen):
            crop = image[y0:y1, x0:x1]
            write_sample(args.out, f"{path.stem}_{k}", crop, np.zeros(crop.shape[:2], np.uint16), [], np.zeros(crop.shape[:2], np.uint16))
        per_field.append({"image": path.name, "found": len(cells), "on_red_points": int(red.sum()), "windows": len(chosen)})
    found = np.array([f["found"] for f in per_field])
    report = {"model": str(args.model), "n_fields": len(per_field), "found_per_field": float(found.mean()),
              "on_red_points": int(sum(f["on_red_points"] for f in per_field)),
              "windows": int(sum(f["windows"] for f in per_field)), "fields": per_field}
    write_json(args.out / "report.json", report)
    print(json.dumps({k: v for k, v in report.items() if k != "fields"}))


if __name__ == "__main__":
    main()
