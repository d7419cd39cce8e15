"""The real data of ../shared/data (read from there, never copied): where each source lives, its pixel size
and how that was measured, which images are held out, and its ground truth of white cells.

Pixel sizes (um per px; one per source: each was imaged at one magnification):

* chula-rbc12: 0.1887 - its own scale bar, 106 px = 20 um (median of the 30 of the first 40 fields whose
  bar is whole);
* pbc: 0.1005 - red cells, measured alike in both sources (isolated cells: green-channel Otsu, holes
  filled, solidity >= 0.95, longest box side; median 77 px in PBC, 41 px in Chula), against Chula;
* bccd-wbc: 0.0731 - the median red-cell box of its VOC files (110 px, whole boxes) against PBC's YOLO
  red-cell boxes (80 px);
* wbc-zheng2018 dataset1 / dataset2: 0.170 / 0.0869 - their white cells' median equivalent diameter
  (74.9 / 146.4 px, from the masks) against BCCD's (174.2 px at 0.0731 um/px: 12.7 um);
* painted smears (``SynthConfig.wbc_field``): red cells 38 px wide = 7.5 um, 0.1974.

benchmarks/pixel_sizes.py measures them again from the data: 0.1887, 0.1005, 0.0737, 0.1715, 0.0877 (the
values above came from a first pass with BCCD's red-cell boxes at 110 px instead of 109: within 1%).

Held-out images: each folder split on its own with seed 0, 20% held out (hemaseg.scale.split_images,
the same split as `hemaseg train --data FOLDER` with --seed 0); for PBC its own ``val/`` folder (1,100
crops), ``train/`` being used for training.

Citations and licences: the README.md of each folder (BCCD, MIT; Banik et al. 2020 masks, MIT; PBC,
Acevedo et al. 2020, CC BY 4.0, OI-PBC boxes, Abou Ali et al.; Chula RBC-12, MIT; Zheng et al. 2018,
GPL-3.0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hemaseg.data.boxes import Boxes, read_yolo
from hemaseg.data.formats import list_images
from hemaseg.scale import split_images

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PIXEL_SIZE = {"bccd": 0.0731, "pbc": 0.1005, "chula": 0.1887, "dataset1": 0.170, "dataset2": 0.0869, "synthetic": 7.5 / 38}
FOLDERS = {"bccd": "bccd-wbc", "pbc": "pbc/train", "chula": "chula-rbc12", "dataset1": "wbc-zheng2018/dataset1",
           "dataset2": "wbc-zheng2018/dataset2"}
NOT_WHITE = {"red_cell", "platelet"}  # PBC box classes that are not white (nucleated) cells; erythroblasts count as nucleated


def folder(name: str, data: Path = DATA) -> Path:
    return data / FOLDERS[name]


def held_out(name: str, data: Path = DATA) -> list[Path]:
    """The held-out images of a source (see the module docstring)."""
    if name == "pbc":
        return list_images([data / "pbc" / "val"])
    return split_images(list_images([folder(name, data)]), 0.2, 0)[1]


def pbc_classes(data: Path = DATA) -> list[str]:
    return (data / "pbc" / "train" / "labels" / "classes.txt").read_text().split()


def pbc_white_boxes(image: Path, height: int, width: int, classes: list[str]) -> Boxes:
    """The white (nucleated) cells boxed in a PBC crop: every YOLO box but red cells and platelets."""
    boxes = read_yolo(image.parent / "labels" / f"{image.stem}.txt", classes, height, width)
    return boxes.only(set(boxes.names) - NOT_WHITE)


def median_box_diameter(boxes: list[Boxes]) -> float:
    """Median ``sqrt(w h)`` of boxes: a disk's diameter when it fills its box."""
    sides = np.concatenate([np.sqrt((b.xyxy[:, 2] - b.xyxy[:, 0]) * (b.xyxy[:, 3] - b.xyxy[:, 1])) for b in boxes if len(b)])
    return float(np.median(sides))
