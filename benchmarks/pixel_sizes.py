"""The pixel size of each source (benchmarks/real_sources.py), measured from the data itself:

    .venv/bin/python benchmarks/pixel_sizes.py

1. chula-rbc12 carries a scale bar (green, "20.00 um"): its length in px in the first 40 fields;
2. isolated red cells, measured the same way in Chula and PBC (green channel smoothed, Otsu, holes
   filled; whole objects of solidity >= 0.95 and >= 50 px; the longer side of their box): the ratio of
   the medians carries Chula's scale to PBC;
3. the red-cell boxes of BCCD (VOC) and PBC (YOLO), whole boxes only (1 px from the border): the ratio of
   the medians carries PBC's scale to BCCD;
4. the white cells' median equivalent diameter in the masks of BCCD and Zheng's dataset1 and dataset2:
   the ratio carries BCCD's scale to Zheng's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure

sys.path.insert(0, str(Path(__file__).parent))
from real_sources import DATA, pbc_classes  # noqa: E402

from hemaseg.data.boxes import read_voc, read_yolo  # noqa: E402
from hemaseg.data.contract import image_to_rgb8  # noqa: E402
from hemaseg.data.dataset import cell_diameter  # noqa: E402
from hemaseg.data.formats import list_images, open_dataset  # noqa: E402
from hemaseg.data.io import read_image  # noqa: E402


def scale_bar_px(rgb: np.ndarray) -> int | None:
    """Length (px) of the largest pure-green object: Chula's scale bar."""
    a = rgb.astype(int)
    green = (a[..., 1] > 150) & (a[..., 0] < 120) & (a[..., 2] < 120)
    regions = measure.regionprops(measure.label(green))
    if not regions:
        return None
    r = max(regions, key=lambda r: r.area)
    return r.bbox[3] - r.bbox[1]


def isolated_cells(rgb: np.ndarray) -> list[int]:
    """Longer box side (px) of the whole, convex dark objects of a field (mostly isolated red cells)."""
    g = ndi.gaussian_filter(rgb[..., 1].astype(float), 1)
    fg = ndi.binary_fill_holes(g < filters.threshold_otsu(g))
    h, w = fg.shape
    out = []
    for r in measure.regionprops(measure.label(fg)):
        y0, x0, y1, x1 = r.bbox
        if y0 == 0 or x0 == 0 or y1 == h or x1 == w or r.area < 50 or r.solidity < 0.95:
            continue
        out.append(max(y1 - y0, x1 - x0))
    return out


def whole_sides(xyxy: np.ndarray, h: int, w: int) -> np.ndarray:
    b = xyxy[(xyxy[:, 0] > 1) & (xyxy[:, 1] > 1) & (xyxy[:, 2] < w - 1) & (xyxy[:, 3] < h - 1)]
    return np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])


def main() -> None:
    chula = list_images([DATA / "chula-rbc12"])
    bars = [b for b in (scale_bar_px(image_to_rgb8(read_image(p))) for p in chula[:40]) if b and b > 80]
    bar = float(np.median(bars))
    chula_um = 20.0 / bar
    print(f"Chula scale bar: median {bar:.0f} px over {len(bars)} of 40 fields -> {chula_um:.4f} um/px")

    pbc = list_images([DATA / "pbc" / "train"])
    chula_red = np.median([s for p in chula[::3] for s in isolated_cells(image_to_rgb8(read_image(p)))])
    pbc_red = np.median([s for p in pbc[::10] for s in isolated_cells(image_to_rgb8(read_image(p)))])
    pbc_um = chula_um * chula_red / pbc_red
    print(f"isolated red cells: Chula {chula_red:.0f} px, PBC {pbc_red:.0f} px -> PBC {pbc_um:.4f} um/px")

    classes = pbc_classes()
    pbc_boxes = np.concatenate([whole_sides(b.only({"red_cell"}).xyxy, 363, 360)
                                for b in (read_yolo(p.parent / "labels" / f"{p.stem}.txt", classes, 363, 360) for p in pbc)])
    bccd_boxes = []
    for xml in sorted((DATA / "bccd-wbc" / "annotations").glob("*.xml")):
        b, (h, w) = read_voc(xml)
        bccd_boxes.append(whole_sides(b.only({"RBC"}).xyxy, h, w))
    bccd_red, pbc_box = float(np.median(np.concatenate(bccd_boxes))), float(np.median(pbc_boxes))
    bccd_um = pbc_um * pbc_box / bccd_red
    print(f"red-cell boxes: PBC {pbc_box:.0f} px, BCCD {bccd_red:.0f} px -> BCCD {bccd_um:.4f} um/px")

    bccd_white = cell_diameter(open_dataset(DATA / "bccd-wbc"), open_dataset(DATA / "bccd-wbc").refs)
    print(f"white cells in BCCD's masks: {bccd_white:.1f} px = {bccd_white * bccd_um:.1f} um")
    for name in ("dataset1", "dataset2"):
        source = open_dataset(DATA / "wbc-zheng2018" / name)
        d = cell_diameter(source, source.refs)
        print(f"white cells in Zheng {name}: {d:.1f} px -> {bccd_white * bccd_um / d:.4f} um/px")


if __name__ == "__main__":
    main()
