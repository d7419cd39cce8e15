"""The scale estimate on held-out real images, and what its error costs the segmentation.

    .venv/bin/python benchmarks/scale_estimate.py                       # the bundled scale model
    .venv/bin/python benchmarks/scale_estimate.py --scale runs/scale.pt --sensitivity runs/model.pt

1. Per source (benchmarks/real_sources.py, held-out images): estimate / true pixel size - median, 10th and
   90th percentiles, share within 10% - for the first reading alone (the image shrunk
   ``ScaleConfig.downsample`` times) and for the two readings of ``hemaseg.scale.estimate_scale``.
2. ``--sensitivity MODEL``: the model on the held-out images of dataset2, dataset1 and BCCD given the true
   pixel size times 0.8 ... 1.25 (``--pixel-size``): precision, recall, matched IoU, whole-image IoU -
   how far off the estimate may be before the outlines suffer.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from real_fields import mask_rows, summary, table  # noqa: E402
from real_sources import DATA, PIXEL_SIZE, held_out  # noqa: E402

from hemaseg.data.contract import image_to_tensor  # noqa: E402
from hemaseg.data.io import read_image  # noqa: E402
from hemaseg.predict import ModelMethod, SegmentConfig  # noqa: E402
from hemaseg.scale import bundled_scale_net, estimate_scale, load_scale_net, read_views  # noqa: E402


def readings(net, data: Path, limit: int | None) -> list[dict]:
    rows = []
    for name in ("bccd", "pbc", "chula", "dataset1", "dataset2"):
        one, two = [], []
        for path in held_out(name, data)[:limit]:
            x = image_to_tensor(read_image(path))
            logs, cells = read_views(net, x, net.cfg.downsample, 8)
            seen = cells >= net.cfg.min_cells
            one.append(math.exp(float(np.median(logs[seen if seen.any() else slice(None)]))) / PIXEL_SIZE[name])
            est = estimate_scale(net, x)
            two.append((est.pixel_size or math.nan) / PIXEL_SIZE[name])
        for label, r in (("one reading", np.array(one)), ("two readings (the default)", np.array(two))):
            rows.append({"source": name, "images": len(r), "readings": label, "median ratio": float(np.nanmedian(r)),
                         "10th pct": float(np.nanpercentile(r, 10)), "90th pct": float(np.nanpercentile(r, 90)),
                         "within 10%": float(np.mean(np.abs(r - 1) <= 0.1))})
        print(rows[-2], rows[-1], flush=True)
    return rows


def sensitivity(model: Path, data: Path, limit: int | None) -> list[dict]:
    rows = []
    for name in ("dataset2", "dataset1", "bccd"):
        for k in (0.8, 0.9, 1.0, 1.1, 1.25):
            cfg = SegmentConfig(pixel_size=PIXEL_SIZE[name] * k)
            s = summary(mask_rows(ModelMethod.from_checkpoint(model, cfg), cfg, name, data, limit))
            rows.append({"source": name, "pixel size given": f"true x{k}", "images": s["images"], "precision": s["precision"],
                         "recall": s["recall"], "matched IoU": s["matched_iou"], "image IoU": s["image_iou"]})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=Path, help="a scale model (default: the bundled one)")
    ap.add_argument("--sensitivity", type=Path, help="a segmentation model: its accuracy under scale errors")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--limit", type=int, default=None, help="held-out images per source")
    args = ap.parse_args()
    net = load_scale_net(args.scale) if args.scale else bundled_scale_net()
    print(table(readings(net, args.data, args.limit)))
    if args.sensitivity:
        print("\n" + table(sensitivity(args.sensitivity, args.data, args.limit)))


if __name__ == "__main__":
    main()
