"""White-cell masks for the PBC crops, which are boxed but not outlined: a model's outlines kept where they
agree with the experts' boxes (pseudo-masks), written as an instance dataset for `hemaseg train`.

    .venv/bin/python benchmarks/pbc_pseudo_masks.py --model runs/stageA/run/best.pt --out runs/pbc-pseudo

For each crop of ``pbc/train`` the model segments it at PBC's pixel size (0.1005 um/px, known: no estimate);
each boxed nucleated cell (every YOLO box but red cells and platelets) takes the predicted cell whose box
overlaps its box most, if that box IoU is at least ``--min-box-iou``. A crop is kept only when every one of
its boxed cells got an outline (a crop with a boxed cell left unoutlined would teach the model to miss it);
its other predicted cells are dropped (the boxes say they are not white cells); a crop without a boxed
nucleated cell (PBC's platelet crops) is kept with no cell: a negative. Written: ``images/NAME.jpg``
(a symbolic link to ../shared, nothing copied), ``labels/NAME.png`` (16-bit label image) with
``labels/NAME.csv`` (class ``cell``) and ``nuclei/NAME.png`` (the model's learned nuclei), and
``report.json`` (crops kept and dropped, box IoU of the kept outlines).

How good such masks are cannot be measured on PBC itself (it has no outlines); docs/benchmarks.md compares
models trained with and without them on the sources that have outlines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from real_sources import DATA, PIXEL_SIZE, pbc_classes, pbc_white_boxes  # noqa: E402

from hemaseg.data.boxes import box_iou  # noqa: E402
from hemaseg.data.contract import image_to_tensor  # noqa: E402
from hemaseg.data.formats import list_images  # noqa: E402
from hemaseg.data.io import read_image, write_json  # noqa: E402
from hemaseg.data.synthetic import write_sample  # noqa: E402
from hemaseg.predict import ModelMethod, SegmentConfig, image_scale, run_methods  # noqa: E402
from hemaseg.cells import Cells  # noqa: E402


def pseudo_labels(cells: Cells, truth_boxes: np.ndarray, min_iou: float):
    """``(labels HxW uint16, nuclei HxW uint16, box IoUs)`` of the predicted cells matched to ``truth_boxes``
    (``N x 4 XYXY``), or None when one of the boxes has no predicted cell at ``min_iou``. No box (a crop of
    a platelet): no cell, whatever the model found."""
    if not len(truth_boxes):
        empty = np.zeros((cells.height, cells.width), np.uint16)
        return empty, empty, np.zeros(0)
    iou = box_iou(truth_boxes, cells.boxes)
    if iou.shape[1] == 0 or (iou.max(axis=1) < min_iou).any():
        return None
    pick = iou.argmax(axis=1)
    if len(set(pick.tolist())) < len(pick):  # two boxes took one outline
        return None
    chosen = cells.select(pick)
    labels = chosen.label_image().astype(np.uint16)
    nuclei = np.zeros_like(labels)
    if chosen.nuclei is not None:
        for k, ((x0, y0, x1, y1), n, m) in enumerate(zip(chosen.boxes, chosen.nuclei, chosen.masks), start=1):
            region = nuclei[y0:y1, x0:x1]
            region[n & m & (labels[y0:y1, x0:x1] == k)] = k
    return labels, nuclei, iou.max(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/pbc-pseudo"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--min-box-iou", type=float, default=0.75)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    classes = pbc_classes(args.data)
    cfg = SegmentConfig(pixel_size=PIXEL_SIZE["pbc"], nuclei="auto")
    method = ModelMethod.from_checkpoint(args.model, cfg)
    files = list_images([args.data / "pbc" / "train"])
    kept, dropped, ious = [], [], []
    for start in range(0, len(files), args.batch):
        part = files[start : start + args.batch]
        images = [image_to_tensor(read_image(p)) for p in part]
        factors = [image_scale(method, im, cfg).resize for im in images]
        for path, image, cells in zip(part, images, run_methods(method, images, cfg, factors)):
            truth = pbc_white_boxes(path, image.shape[1], image.shape[2], classes)
            got = pseudo_labels(cells, truth.xyxy, args.min_box_iou)
            if got is None:
                dropped.append(path.name)
                continue
            labels, nuclei, box_ious = got
            link = args.out / "images" / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                os.symlink(os.path.relpath(path.resolve(), link.parent.resolve()), link)
            write_sample(args.out, path.stem, None, labels, ["cell"] * int(labels.max()), nuclei)
            kept.append(path.name)
            ious += box_ious.tolist()
        if (start // args.batch) % 50 == 0:
            print(f"{start + len(part)}/{len(files)}: kept {len(kept)}, dropped {len(dropped)}", flush=True)
    report = {"model": str(args.model), "min_box_iou": args.min_box_iou, "kept": len(kept), "dropped": len(dropped),
              "median_box_iou": float(np.median(ious)) if ious else None, "dropped_crops": dropped}
    write_json(args.out / "report.json", report)
    print(json.dumps({k: v for k, v in report.items() if k != "dropped_crops"}))


if __name__ == "__main__":
    main()
