"""Nucleus Dice of hemaseg.nuclei.split_nucleus given the TRUE cell outlines (Zheng et al. 2018).

    .venv/bin/python benchmarks/nucleus_split.py ../shared/data/wbc-zheng2018/dataset1 ../shared/data/wbc-zheng2018/dataset2

Isolates the nucleus step from the cell segmentation: per image, the Dice of the union of split nuclei
against the union of true nuclei (255 in the masks), averaged over images. Prints a Markdown table.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from hemaseg.data.formats import load_sample, open_dataset
from hemaseg.metrics import dice
from hemaseg.nuclei import nuclei_for


def main(folders: list[str]) -> None:
    print("| data | images | nucleus Dice mean | median | min | s/image |\n|---|---|---|---|---|---|")
    for folder in folders:
        src = open_dataset(folder)
        scores, t0 = [], time.perf_counter()
        for ref in src.refs:
            image, target = load_sample(ref, src.classes)
            masks = target["masks"].numpy()
            pred = nuclei_for(image, masks, [src.classes[k - 1] for k in target["labels"].tolist()])
            scores.append(dice(target["nuclei"].numpy(), pred))
        s = np.array(scores)
        print(f"| {folder} | {len(s)} | {s.mean():.4f} | {np.median(s):.4f} | {s.min():.4f} | "
              f"{(time.perf_counter() - t0) / len(s):.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
