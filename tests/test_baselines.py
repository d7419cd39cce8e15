import numpy as np
import pytest
import torch

from hemaseg.baselines import segment_classical, split_touching
from hemaseg.metrics import match


def _two_touching_cells():
    yy, xx = np.mgrid[:80, :100]
    a = (yy - 40) ** 2 + (xx - 35) ** 2 < 15**2
    b = (yy - 40) ** 2 + (xx - 62) ** 2 < 15**2
    img = np.full((80, 100, 3), 0.92)
    img[a | b] = (0.55, 0.3, 0.6)  # stained: saturated and darker
    truth = np.stack([a & ~b, b]).astype(np.uint8)
    return torch.from_numpy(img.transpose(2, 0, 1)).float(), truth


@pytest.mark.parametrize("method", ["otsu", "edges"])
def test_classical_methods_split_touching_cells(method):
    image, truth = _two_touching_cells()
    masks = segment_classical(image, method)
    m = match(truth, masks, 0.5)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.mean_matched_iou > 0.8


@pytest.mark.parametrize("method", ["otsu", "edges"])
def test_blank_image_gives_no_cells(method):
    assert segment_classical(torch.full((3, 30, 30), 0.9), method).shape == (0, 30, 30)


def test_split_touching_seeds_every_region():
    fg = np.zeros((20, 20), bool)
    fg[2:8, 2:8] = True
    fg[12:18, 12:18] = True
    assert split_touching(fg, min_distance=3, min_area=5).max() == 2
    with pytest.raises(ValueError, match="unknown classical method"):
        segment_classical(torch.zeros(3, 4, 4), "magic")
