"""The largest purple object still kept as a platelet (``SmearConfig.max_platelet_area``, in red-cell
areas), chosen on BCCD's *training* fields and checked on PBC before the held-out run of
benchmarks/red_cells.py (issue 21): platelet recall and precision at box IoU 0.3 for each bound.

    .venv/bin/python benchmarks/platelet_size.py     # 3 min on the 2-core CPU

Both at each source's true pixel size (benchmarks/real_sources.py), white cells left out: BCCD by its
white-cell masks, PBC by its white cells' boxes (so platelets inside those boxes are missed by every bound
alike). PBC: every 10th training crop. BCCD (Shenggan 2017, MIT); PBC (Acevedo et al. 2020, CC BY 4.0).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from real_sources import PIXEL_SIZE, folder, held_out, pbc_classes, pbc_white_boxes  # noqa: E402

from hemaseg.data.boxes import box_iou, read_voc, read_yolo  # noqa: E402
from hemaseg.data.contract import image_to_rgb8  # noqa: E402
from hemaseg.data.formats import list_images  # noqa: E402
from hemaseg.data.io import read_image  # noqa: E402
from hemaseg.metrics import matched_ious  # noqa: E402
from hemaseg.redcells import SmearConfig, find_smear_cells  # noqa: E402
from hemaseg.scale import RED_CELL_UM  # noqa: E402

BOUNDS = (0.2, 0.3, 0.4, 0.5)


def fields():
    """``(source, rgb, white mask, platelet boxes XYXY)`` of BCCD's training fields and every 10th PBC crop."""
    held = {str(p) for p in held_out("bccd")}
    for p in list_images([folder("bccd")]):
        if str(p) in held:
            continue
        white = np.asarray(Image.open(p.with_suffix(".png"))) > 0
        boxes, _ = read_voc(folder("bccd") / "annotations" / f"{p.stem}.xml")
        yield "bccd", image_to_rgb8(read_image(p)), white if white.ndim == 2 else white[..., 0], boxes.only({"Platelets"}).xyxy
    classes = pbc_classes()
    for p in list_images([folder("pbc")])[::10]:
        rgb = image_to_rgb8(read_image(p))
        h, w = rgb.shape[:2]
        white = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in pbc_white_boxes(p, h, w, classes).xyxy.astype(int):
            white[y0:y1, x0:x1] = True
        yield "pbc", rgb, white, read_yolo(p.parent / "labels" / f"{p.stem}.txt", classes, h, w).only({"platelet"}).xyxy


def main() -> None:
    tally: dict[tuple[str, float], list[int]] = {}
    for source, rgb, white, truth in fields():
        for bound in BOUNDS:
            found = find_smear_cells(rgb, RED_CELL_UM / PIXEL_SIZE[source], exclude=white,
                                     cfg=dataclasses.replace(SmearConfig(), max_platelet_area=bound))
            plt = found.select(found.labels == 2)
            hit = len(matched_ious(box_iou(truth, plt.boxes.astype(np.float64)), 0.3)) if len(truth) and len(plt) else 0
            t = tally.setdefault((source, bound), [0, 0, 0])
            t[0], t[1], t[2] = t[0] + hit, t[1] + len(truth), t[2] + len(plt)
    for (source, bound), (hit, n_true, n_found) in tally.items():
        print(f"{source} max_platelet_area {bound}: recall {hit / n_true:.3f} precision {hit / max(n_found, 1):.3f} "
              f"({n_true} boxes, {n_found} found)")


if __name__ == "__main__":
    main()
