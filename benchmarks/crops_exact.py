"""The two inference shortcuts of the red-cell morphology step change nothing that matters (issue 21):

    .venv/bin/python benchmarks/crops_exact.py      # about 20 s

* ``celltypes.context_crops`` (all of a field's windows sampled at once) against ``context_crop`` (one
  scikit-image resize per window, as the training crops were made): 100 random windows of the first
  held-out Chula field (0.1887 um/px, nearly the crops' scale) and of the first BCCD field (0.0731 um/px,
  shrunk 2.7 times): mean and largest difference in grey levels, seconds each way, and how many of the
  bundled classifier's calls and how far its probabilities differ;
* ``backbones.fold_batchnorm``: the bundled morphology classifier as loaded (BatchNorms folded) against the
  same file loaded plainly, on the crops of every point of the first five held-out Chula fields: largest
  probability difference and calls that differ.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from real_sources import PIXEL_SIZE, folder, held_out  # noqa: E402

from hemaseg.celltypes import CellTypeClassifier, context_crop, context_crops  # noqa: E402
from hemaseg.data.contract import image_to_rgb8  # noqa: E402
from hemaseg.data.io import read_image  # noqa: E402
from hemaseg.model import BUNDLED_MORPHOLOGY  # noqa: E402
from hemaseg.redcells import bundled_morphology  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    folded = bundled_morphology()
    cfg = folded.cfg
    for source in ("chula", "bccd"):
        rgb = image_to_rgb8(read_image(held_out(source)[0]))
        rng = np.random.default_rng(0)
        centres = [(float(rng.uniform(0, rgb.shape[0])), float(rng.uniform(0, rgb.shape[1]))) for _ in range(100)]
        px = PIXEL_SIZE[source]
        context_crops(rgb, centres[:2], px, cfg)
        t0 = time.perf_counter()
        many = context_crops(rgb, centres, px, cfg)
        t1 = time.perf_counter()
        one = np.stack([context_crop(rgb, c, px, cfg) for c in centres])
        t2 = time.perf_counter()
        d = np.abs(many.astype(int) - one)
        a, b = folded.probabilities(many), folded.probabilities(one)
        print(f"{source}: crops differ by {d.mean():.4f} grey levels on average, {d.max()} at most; "
              f"{t1 - t0:.3f} s at once, {t2 - t1:.3f} s one by one; calls differing {(a.argmax(1) != b.argmax(1)).sum()} of "
              f"{len(centres)}, largest probability difference {np.abs(a - b).max():.4f}")
    plain = CellTypeClassifier.load(BUNDLED_MORPHOLOGY)
    worst, differ, n = 0.0, 0, 0
    for path in held_out("chula")[:5]:
        rgb = image_to_rgb8(read_image(path))
        pts = np.loadtxt(folder("chula") / "labels" / f"{path.stem}.txt", ndmin=2).astype(int)
        crops = context_crops(rgb, [(y, x) for x, y, _ in pts], PIXEL_SIZE["chula"], cfg)
        a, b = plain.probabilities(crops), folded.probabilities(crops)
        worst, differ, n = max(worst, float(np.abs(a - b).max())), differ + int((a.argmax(1) != b.argmax(1)).sum()), n + len(pts)
    print(f"fold_batchnorm: {n} crops, largest probability difference {worst:.2e}, calls differing {differ}")


if __name__ == "__main__":
    main()
