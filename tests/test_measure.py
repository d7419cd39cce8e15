import math

import numpy as np
import pytest

from hemaseg.measure import columns, measure_cells


def _disk(r, h=200, w=220, cy=101.3, cx=98.7):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


@pytest.mark.parametrize("r", [12, 30, 60])
def test_disk_area_and_perimeter_within_2_percent(r):
    row = measure_cells(_disk(r)[None], ["cell"], pixel_size=0.25)[0]
    assert row["area_px"] == pytest.approx(math.pi * r * r, rel=0.02)
    assert row["perimeter_px"] == pytest.approx(2 * math.pi * r, rel=0.02)
    assert row["equivalent_diameter_px"] == pytest.approx(2 * r, rel=0.02)
    assert row["circularity"] == pytest.approx(1.0, abs=0.03)
    assert row["eccentricity"] < 0.2
    assert row["area_um2"] == pytest.approx(row["area_px"] * 0.0625, rel=1e-3)
    assert row["perimeter_um"] == pytest.approx(row["perimeter_px"] * 0.25, rel=1e-3)
    assert (row["centroid_x"], row["centroid_y"]) == pytest.approx((98.7, 101.3), abs=0.1)


def test_ellipse_eccentricity_and_nucleus_ratio():
    yy, xx = np.mgrid[:100, :100]
    ell = (((yy - 50) / 20.0) ** 2 + ((xx - 50) / 40.0) ** 2 <= 1).astype(np.uint8)
    nuc = (((yy - 50.3) ** 2 + (xx - 49.6) ** 2) <= 225).astype(np.uint8)  # a disk nucleus, r = 15
    row = measure_cells(ell[None], ["white_cell"], [0.9], nuclei=nuc[None], pixel_size=0.5)[0]
    assert row["eccentricity"] == pytest.approx(math.sqrt(1 - 0.25), abs=0.02)
    assert row["nucleus_area_px"] == int(nuc.sum())
    assert row["nc_ratio"] == pytest.approx(nuc.sum() / (row["area_px"] - nuc.sum()), rel=1e-3)
    assert row["score"] == 0.9
    assert row["nucleus_lobes"] == 1 and row["nucleus_circularity"] == pytest.approx(1.0, abs=0.03)
    assert row["nucleus_area_um2"] == pytest.approx(nuc.sum() / 4)
    assert row["cytoplasm_area_um2"] == pytest.approx((row["area_px"] - nuc.sum()) / 4)


def test_cell_on_the_border_and_empty_masks():
    m = np.zeros((2, 10, 10), np.uint8)
    m[0, :3, :3] = 1  # in the corner
    rows = measure_cells(m, ["a", "b"])
    assert len(rows) == 1 and rows[0]["id"] == 1
    assert rows[0]["perimeter_px"] > 0 and rows[0]["bbox_x1"] == 0
    assert columns(None, False)[-1] == "bbox_y2" and "nc_ratio" in columns(0.5, True)
    with pytest.raises(ValueError, match="2 masks but 1 classes"):
        measure_cells(m, ["a"])
