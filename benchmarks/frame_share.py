"""How Chula RBC-12's annotators treat red cells cut by the image's frame, on its *training* fields only:
the evidence for :data:`hemaseg.redcells.FRAME_SHARE`, the count convention of ``segment`` (issue 21).

    .venv/bin/python benchmarks/frame_share.py      # about 3 min on the 2-core CPU

On each of the 249 training fields (benchmarks/real_sources.py's split; the held-out ones are never read)
it makes the call ``segment`` makes (the bundled model's white cells and scale estimate, then the red
cells, as :func:`hemaseg.segment.with_smear_cells` finds them). A field counts as pointed throughout when at least 90% of
its whole found red cells (at least 20) hold a point - on most Chula fields only the abnormal cells carry
one. On those fields it prints:

* for the found red cells cut by the frame, by the share of a whole cell in view (area against the
  field's median whole red cell): how many there are and how many the annotators pointed at;
* the mean count error |count - points| / points per field (and its bias) of several conventions:
  whole cells only, cut cells counted from a share of 0.5 / 0.65 / 0.75 / 0.8 / 0.85 in view, the unbiased
  counting frame (cut cells touching the top or left edge, not the bottom or right: Gundersen 1977), and
  every found cell.

Chula RBC-12 (Naruenatthanaset et al. 2021, MIT).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from real_sources import folder  # noqa: E402

from hemaseg.cells import Cells  # noqa: E402
from hemaseg.data.contract import image_to_rgb8, image_to_tensor  # noqa: E402
from hemaseg.data.formats import list_images  # noqa: E402
from hemaseg.data.io import read_image  # noqa: E402
from hemaseg.model import default_model  # noqa: E402
from hemaseg.predict import ModelMethod, SegmentConfig, segment_image  # noqa: E402
from hemaseg.redcells import RED_CELL, SmearConfig, counted_cells, cut_by_frame, find_smear_cells  # noqa: E402
from hemaseg.scale import RED_CELL_UM, split_images  # noqa: E402
from hemaseg.segment import typing_pixel_size  # noqa: E402

SHARES = (0.5, 0.65, 0.75, 0.8, 0.85)


def training_fields():
    """Each of Chula's training fields with points, as ``segment`` sees it: ``(name, rgb, white, red_px, points)``
    - the field (``HxWx3 uint8``), its white cells' pixels (``HxW bool``, the bundled model's), its red-cell
    diameter in px (from the bundled scale estimate) and its points (``N x 3``: x, y, class)."""
    method = ModelMethod.from_checkpoint(default_model(), SegmentConfig())
    cfg = SegmentConfig(smear_cells=True)
    for path in split_images(list_images([folder("chula")]), 0.2, 0)[0]:
        pts = np.loadtxt(folder("chula") / "labels" / f"{path.stem}.txt", ndmin=2)
        if pts.shape[1] != 3 or not len(pts):
            continue
        raw = read_image(path)
        white, scale = segment_image(method, image_to_tensor(raw), cfg)
        yield path.stem, image_to_rgb8(raw), white.union(), RED_CELL_UM / typing_pixel_size(method, scale, cfg), pts.astype(int)


def red_cells(rgb: np.ndarray, white: np.ndarray, red_px: float, cfg: SmearConfig = SmearConfig()) -> Cells:
    found = find_smear_cells(rgb, red_px, exclude=white, cfg=cfg)
    return found.select(found.labels == 1)


def truths_per_cell(red: Cells, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """How many of the points ``(ys, xs)`` each found cell holds."""
    lab = red.label_image()
    return np.bincount(lab[ys.clip(0, lab.shape[0] - 1), xs.clip(0, lab.shape[1] - 1)], minlength=len(red) + 1)[1:]


def pointed_throughout(red: Cells, pts: np.ndarray) -> bool:
    """At least 90% of the field's whole found red cells (at least 20) hold a point."""
    per = truths_per_cell(red, pts[:, 1], pts[:, 0])
    cut = cut_by_frame(red)
    return (~cut).sum() >= 20 and (per[~cut] > 0).mean() >= 0.9


def main() -> None:
    torch.set_num_threads(2)
    bins = np.zeros((12, 2), int)  # per tenth of a cell in view: cut cells, pointed at
    errors: dict[str, list[float]] = {}
    fields = 0
    for _, rgb, white, red_px, pts in training_fields():
        red = red_cells(rgb, white, red_px)
        if not pointed_throughout(red, pts):
            continue
        fields += 1
        h, w = red.height, red.width
        per = truths_per_cell(red, pts[:, 1], pts[:, 0])
        cut = cut_by_frame(red)
        area = np.array([m.sum() for m in red.masks], np.float64)
        share = area / np.median(area[~cut])
        for s, p in zip(share[cut], per[cut]):
            bins[min(int(s * 10), 11)] += (1, int(p > 0))
        b = red.boxes
        top_left = (b[:, 0] <= 0) | (b[:, 1] <= 0)
        bottom_right = (b[:, 2] >= w) | (b[:, 3] >= h)
        counts = {"whole only": int((~cut).sum()), "all found": len(red),
                  "counting frame (Gundersen)": int((~cut).sum() + (top_left & ~bottom_right).sum()),
                  **{f"share {s}": int(counted_cells(red, [RED_CELL] * len(red), s).sum()) for s in SHARES}}
        for k, n in counts.items():
            errors.setdefault(k, []).append((n - len(pts)) / len(pts))
    print(f"{fields} training fields pointed throughout")
    print("share of a cell in view | cut cells | pointed at")
    for k, (n, p) in enumerate(bins):
        if n:
            print(f"{k / 10:.1f}-{(k + 1) / 10:.1f} | {n} | {p / n:.2f}")
    print("convention | mean count error | bias")
    for k, e in errors.items():
        print(f"{k} | {np.mean(np.abs(e)):.4f} | {np.mean(e):+.4f}")


if __name__ == "__main__":
    main()
