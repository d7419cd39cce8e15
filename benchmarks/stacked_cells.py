"""Two red cells, one lying on the other, found as one (issue 21): the evidence for
:func:`hemaseg.redcells.split_pairs` and its settings (``SmearConfig.pair_area``, ``pair_elongation``), on
*training* data of two labs only:

    .venv/bin/python benchmarks/stacked_cells.py      # about 6 min on the 2-core CPU

* Chula RBC-12, the training fields pointed throughout (benchmarks/frame_share.py): a found red cell holding
  two points is two cells found as one;
* PBC, every 15th training crop (CellaVision, a box on every red cell): a found red cell holding the
  centres of two red-cell boxes is two cells found as one.

First, with the split off, the whole found red cells at least ``area`` times the field's median and
``elongation`` times longer than wide (the rule's two settings, a grid): how many hold two or more truths
(a split is right), one (a split is wrong) or none. Then, split off and on (at the settings shipped):
Chula's merged points, its found cells without a point, point recall and count error against the points
of the inner frame (one red cell in from each edge); PBC's red-cell count error (every found cell against
every box) and box recall at IoU 0.3; and, split off, what the PBC boxes without a found cell are.

Chula RBC-12 (Naruenatthanaset et al. 2021, MIT); PBC (Acevedo et al. 2020, CC BY 4.0; boxes: Abou Ali
et al. 2025).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from frame_share import pointed_throughout, red_cells, training_fields, truths_per_cell  # noqa: E402
from real_sources import folder, pbc_classes  # noqa: E402

from hemaseg.data.boxes import box_iou, read_yolo  # noqa: E402
from hemaseg.data.contract import image_to_rgb8, image_to_tensor  # noqa: E402
from hemaseg.data.formats import list_images  # noqa: E402
from hemaseg.data.io import read_image  # noqa: E402
from hemaseg.metrics import matched_ious  # noqa: E402
from hemaseg.model import default_model  # noqa: E402
from hemaseg.predict import ModelMethod, SegmentConfig, segment_image  # noqa: E402
from hemaseg.redcells import SmearConfig, cut_by_frame  # noqa: E402
from hemaseg.scale import RED_CELL_UM  # noqa: E402
from hemaseg.segment import typing_pixel_size  # noqa: E402

OFF = SmearConfig(pair_area=1e6)  # the split never applies
GRID = [(a, e) for a in (1.3, 1.4, 1.5, 1.6, 1.8) for e in (1.0, 1.2, 1.3, 1.4)]


def pbc_crops():
    """PBC's training crops (every 15th) as ``segment`` sees them: ``(rgb, white, red_px, red-cell boxes)``."""
    method = ModelMethod.from_checkpoint(default_model(), SegmentConfig())
    classes = pbc_classes()
    for path in list_images([folder("pbc")])[::15]:
        raw = read_image(path)
        white, scale = segment_image(method, image_to_tensor(raw), SegmentConfig())
        rgb = image_to_rgb8(raw)
        boxes = read_yolo(path.parent / "labels" / f"{path.stem}.txt", classes, *rgb.shape[:2]).only({"red_cell"}).xyxy
        if len(boxes):
            yield rgb, white.union(), RED_CELL_UM / typing_pixel_size(method, scale, SegmentConfig()), boxes


def shapes(red) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole cells only: area over the field's median, major / minor axis, and their index."""
    from skimage.measure import regionprops

    whole = np.flatnonzero(~cut_by_frame(red))
    area = np.array([red.masks[k].sum() for k in whole], np.float64)
    props = [regionprops(red.masks[k].astype(np.uint8))[0] for k in whole]
    elong = np.array([p.axis_major_length / max(p.axis_minor_length, 1e-6) for p in props])
    return area / np.median(area) if len(area) else area, elong, whole


def main() -> None:
    torch.set_num_threads(2)
    chula = [f for f in training_fields() if pointed_throughout(red_cells(*f[1:4], cfg=OFF), f[4])]
    pbc = list(pbc_crops())
    grid = {key: {g: [0, 0, 0] for g in GRID} for key in ("chula", "pbc")}
    for key, items in (("chula", [(f[1], f[2], f[3], f[4][:, 1], f[4][:, 0]) for f in chula]),
                       ("pbc", [(rgb, white, px, ((b[:, 1] + b[:, 3]) / 2).astype(int), ((b[:, 0] + b[:, 2]) / 2).astype(int))
                                for rgb, white, px, b in pbc])):
        for rgb, white, px, ys, xs in items:
            red = red_cells(rgb, white, px, OFF)
            per = truths_per_cell(red, ys, xs)
            ratio, elong, whole = shapes(red)
            for a, e in GRID:
                hit = per[whole][(ratio >= a) & (elong >= e)]
                grid[key][(a, e)] = [n + int(k) for n, k in zip(grid[key][(a, e)], ((hit >= 2).sum(), (hit == 1).sum(), (hit == 0).sum()))]
    print("area | elongation | Chula: two+ / one / none | PBC: two+ / one / none")
    for g in GRID:
        print(f"{g[0]} | {g[1]} | {' / '.join(map(str, grid['chula'][g]))} | {' / '.join(map(str, grid['pbc'][g]))}")
    for name, cfg in (("split off", OFF), ("split on", SmearConfig())):
        merged = empty = hit = n = 0
        errors = []
        for _, rgb, white, px, pts in chula:
            red = red_cells(rgb, white, px, cfg)
            per = truths_per_cell(red, pts[:, 1], pts[:, 0])
            h, w = red.height, red.width
            inside = lambda y, x: (y >= px) & (y < h - px) & (x >= px) & (x < w - px)  # noqa: E731
            centres = np.array([(b[1] + np.nonzero(m)[0].mean(), b[0] + np.nonzero(m)[1].mean()) for b, m in zip(red.boxes, red.masks)])
            inner = inside(centres[:, 0], centres[:, 1])
            merged += int((per[inner] - 1).clip(0).sum())
            empty += int((per[inner] == 0).sum())
            hit += int((per > 0).sum())
            n += len(pts)
            k = inside(pts[:, 1], pts[:, 0]).sum()
            errors.append((inner.sum() - k) / k)
        pbc_err, box_hit, boxes = [], 0, 0
        for rgb, white, px, b in pbc:
            red = red_cells(rgb, white, px, cfg)
            pbc_err.append((len(red) - len(b)) / len(b))
            box_hit += len(matched_ious(box_iou(b, red.boxes.astype(np.float64)), 0.3)) if len(red) else 0
            boxes += len(b)
        if cfg is OFF:  # what the boxes without a found cell are: slivers at the frame, or inside the crop
            missed = []
            for rgb, white, px, b in pbc:
                red = red_cells(rgb, white, px, cfg)
                iou = box_iou(b, red.boxes.astype(np.float64)) if len(red) else np.zeros((len(b), 1))
                h, w = rgb.shape[:2]
                edge = (b[:, 0] <= 1) | (b[:, 1] <= 1) | (b[:, 2] >= w - 1) | (b[:, 3] >= h - 1)
                share = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (np.pi * px**2 / 4)  # box area / a cell's area
                missed += [(e, s) for e, s, m in zip(edge, share, iou.max(1) < 0.3) if m]
            at_edge = [s for e, s in missed if e]
            print(f"PBC boxes without a found cell at IoU 0.3 (split off): {len(missed)}, {len(at_edge)} of them at the frame "
                  f"(median {np.median(at_edge) if at_edge else 0:.2f} of a cell's area), {len(missed) - len(at_edge)} inside")
        print(f"{name}: Chula ({len(chula)} fields) merged points {merged}, found cells without a point {empty}, point recall "
              f"{hit / n:.4f}, inner count error {np.mean(np.abs(errors)):.4f} (bias {np.mean(errors):+.4f}) | PBC ({len(pbc)} crops, "
              f"{boxes} boxes) count error {np.mean(np.abs(pbc_err)):.4f} (bias {np.mean(pbc_err):+.4f}), box recall {box_hit / boxes:.4f}",
              flush=True)
    print("settings:", {k: v for k, v in dataclasses.asdict(SmearConfig()).items() if k.startswith("pair")})


if __name__ == "__main__":
    main()
