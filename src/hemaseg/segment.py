"""Segment image files in batch and write, per image, atomically: a label image, an overlay, a per-cell
CSV (with nucleus, cytoplasm, N:C ratio and lobes for white cells); and for the batch a summary CSV and
a COCO JSON with every instance mask and score.

A file that fails (unreadable, wrong format ...) is reported in the summary and the batch goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from .classify import UNIDENTIFIED, LinearClassifier, cell_features
from .data.contract import image_to_tensor, masks_to_labels, tensor_to_image
from .data.io import csv_text, read_image, write_image, write_json, write_text
from .measure import columns, measure_cells
from .nuclei import NUCLEATED, nuclei_for
from .predict import Method, SegmentConfig, filter_cells, learned_nuclei
from .viz import overlay


@dataclass
class SegmentSummary:
    out: Path
    rows: list[dict] = field(default_factory=list)  # one per image
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, error)


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a binary ``HxW`` mask, with ``counts`` as text (JSON-able)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _unique_name(stem: str, taken: set[str]) -> str:
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}_{k}", k + 1
    taken.add(name)
    return name


def segment_files(files: list[Path], method: Method, out: str | Path, cfg: SegmentConfig = SegmentConfig(),
                  progress: bool = True, log: Callable[[str], None] = print,
                  classifier: LinearClassifier | None = None) -> SegmentSummary:
    """Segment ``files`` with ``method`` into ``out`` (see the module docstring for the files).

    With a white-cell ``classifier`` (:mod:`hemaseg.classify`), nucleated cells also get a ``type`` (or
    ``unidentified``) and its confidence, and the summary counts cells per type."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = SegmentSummary(out)
    taken: set[str] = set()
    coco_images, coco_anns = [], []
    classes = list(method.classes)
    with_nuclei = cfg.nuclei != "off" and any(c.lower() in NUCLEATED for c in classes)
    types = [*classifier.classes, UNIDENTIFIED] if classifier is not None and with_nuclei else []
    for image_id, path in enumerate(tqdm(files, desc=f"segment ({method.name})", disable=not progress), start=1):
        name = _unique_name(path.stem, taken)
        try:
            raw = read_image(path)
            image = image_to_tensor(raw)
            result = filter_cells(method(image), cfg)
        except Exception as err:  # one bad file must not abort the batch
            summary.failed.append((str(path), f"{err.__class__.__name__}: {err}"))
            summary.rows.append({"image": str(path), "status": "failed", "error": str(err), "cells": 0})
            log(f"failed: {path}: {err}")
            continue
        masks = result["masks"].numpy()
        labels = result["labels"].tolist()
        scores = result["scores"].tolist()
        names = [classes[i - 1] for i in labels]
        nuclei = nuclei_for(image, masks, names, learned_nuclei(result, cfg)) if with_nuclei else None
        lab = masks_to_labels(masks, scores)
        write_image(out / f"{name}_labels.{'png' if lab.dtype == np.uint16 else 'tif'}", lab)
        rgb = tensor_to_image(image)
        write_image(out / f"{name}_overlay.png", overlay(rgb, masks, labels, scores, nuclei=nuclei))
        cells = measure_cells(masks, names, scores, nuclei=nuclei, pixel_size=cfg.pixel_size)
        if classifier is not None and nuclei is not None:
            for cell in cells:
                k = cell["id"] - 1
                if cell["class"].lower() in NUCLEATED:
                    feats = cell_features(image, masks[k], nuclei[k])
                    cell["type"], conf = classifier.predict(feats[None])[0]
                    cell["type_confidence"] = round(conf, 4)
        cell_columns = columns(cfg.pixel_size, nuclei=with_nuclei) + (["type", "type_confidence"] if classifier else [])
        write_text(out / f"{name}_cells.csv", csv_text(cells, cell_columns))
        row = {"image": str(path), "status": "ok", "error": "", "cells": len(cells)}
        for c in classes:
            row[f"n_{c}"] = names.count(c)
        for t in types:
            row[f"n_{t}"] = sum(cell.get("type") == t for cell in cells)
        summary.rows.append(row)
        h, w = lab.shape
        coco_images.append({"id": image_id, "file_name": str(path), "height": h, "width": w})
        for k, (m, c, s) in enumerate(zip(masks, labels, scores)):
            rle = encode_rle(m)
            coco_anns.append({"id": len(coco_anns) + 1, "image_id": image_id, "category_id": int(c),
                              "segmentation": rle, "area": float(mask_utils.area(rle)),
                              "bbox": [float(v) for v in mask_utils.toBbox(rle)], "score": round(float(s), 5),
                              "iscrowd": 0, "cell_id": k + 1})
    header = ["image", "status", "error", "cells"] + [f"n_{c}" for c in classes] + [f"n_{t}" for t in types]
    write_text(out / "summary.csv", csv_text(summary.rows, header))
    write_json(out / "predictions_coco.json", {
        "info": {"description": f"hemaseg predictions ({method.name})"},
        "images": coco_images, "annotations": coco_anns,
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)],
    })
    return summary


