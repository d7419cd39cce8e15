"""The alternative nucleus design, measured: Mask R-CNN trained with nuclei as instances of their own.

    .venv/bin/python benchmarks/nucleus_learned.py --zheng ../shared/data/wbc-zheng2018 --work runs/nucleus-learned

1. Writes Zheng dataset1 as COCO JSON (in --work, pointing at the shared images): every cell as class
   "cell" and its nucleus as an overlapping instance of class "nucleus".
2. Trains `hemaseg train` defaults on it (same seed, so the same 240 / 60 split as the cell-only run).
3. On the 60 held-out images: nucleus Dice of (a) the learned nucleus instances and (b) hemaseg's
   within-cell split applied to the same model's cells; whole-cell IoU alongside.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from hemaseg.data.dataset import select_refs
from hemaseg.data.formats import load_sample, open_dataset
from hemaseg.metrics import dice, semantic_iou
from hemaseg.model import load_model
from hemaseg.nuclei import nuclei_for
from hemaseg.predict import PredictConfig, predict
from hemaseg.segment import encode_rle
from hemaseg.train import TrainConfig, train


def write_coco(zheng: Path, out: Path) -> Path:
    src = open_dataset(zheng / "dataset1")
    images, anns = [], []
    for i, ref in enumerate(src.refs, start=1):
        image, t = load_sample(ref, src.classes)
        h, w = image.shape[1:]
        images.append({"id": i, "file_name": str(ref.image.resolve()), "height": h, "width": w})
        for cat, stack in ((1, t["masks"]), (2, t["nuclei"])):
            for m in stack.numpy():
                if m.any():
                    rle = encode_rle(m)
                    anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "iscrowd": 0, "segmentation": rle,
                                 "area": float(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    path = out / "zheng_d1_nuclei.json"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}]}))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zheng", type=Path, default=Path("../shared/data/wbc-zheng2018"))
    ap.add_argument("--work", type=Path, default=Path("runs/nucleus-learned"))
    args = ap.parse_args()
    coco = write_coco(args.zheng, args.work)
    run = args.work / "run"
    if not (run / "best.pt").is_file():
        train(TrainConfig(data=str(coco), out=str(run)), progress=False)
    model, cfg = load_model(run / "best.pt")
    cell_k, nuc_k = cfg.classes.index("cell") + 1, cfg.classes.index("nucleus") + 1
    src = open_dataset(args.zheng / "dataset1")
    held_out = select_refs(src.refs, src.root, run / "split.json", "val")
    learned, split, cell_iou = [], [], []
    for ref in held_out:
        image, t = load_sample(ref, src.classes)
        out = predict(model, [image], PredictConfig())[0]
        cells = out["masks"][out["labels"] == cell_k].numpy()
        nuclei = out["masks"][out["labels"] == nuc_k].numpy()
        cell_iou.append(semantic_iou(t["masks"], cells))
        learned.append(dice(t["nuclei"], nuclei))
        split.append(dice(t["nuclei"], nuclei_for(image, cells, ["cell"] * len(cells))))
    print(f"{len(held_out)} held-out images of dataset1; model {run / 'best.pt'}\n")
    print("| nucleus from | nucleus Dice | whole-cell IoU |\n|---|---|---|")
    print(f"| learned 'nucleus' instances | {np.mean(learned):.4f} | {np.mean(cell_iou):.4f} |")
    print(f"| within-cell split (hemaseg.nuclei) | {np.mean(split):.4f} | {np.mean(cell_iou):.4f} |")


if __name__ == "__main__":
    main()
