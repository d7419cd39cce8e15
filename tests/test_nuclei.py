import numpy as np
import torch

from hemaseg.data.contract import image_to_tensor
from hemaseg.data.synthetic import WHITE, generate
from hemaseg.metrics import dice
from hemaseg.nuclei import count_lobes, nuclei_for, split_nucleus


def _lobed(k, r=6, gap=20):
    yy, xx = np.mgrid[:30, : gap * (k + 1)]
    out = np.zeros(yy.shape, bool)
    for j in range(k):
        out |= (yy - 15) ** 2 + (xx - gap * (j + 1)) ** 2 < r * r
    if k > 1:
        out |= (abs(yy - 15) <= 1) & (xx > gap) & (xx < gap * k)  # chromatin bridges
    return out


def test_lobe_count_of_hand_made_nuclei():
    assert [count_lobes(_lobed(k)) for k in range(1, 6)] == [1, 2, 3, 4, 5]
    assert count_lobes(np.zeros((5, 5))) == 0


def test_nucleus_of_synthetic_white_cells_is_found():
    scores = []
    for k in range(6):
        s = generate(np.random.default_rng([11, k]))
        image = image_to_tensor(s.image)
        for cell_id in np.nonzero(s.classes == WHITE)[0] + 1:
            cell = s.labels == cell_id
            if cell.sum() < 300:  # mostly hidden under other cells
                continue
            scores.append(dice(s.nuclei == cell_id, split_nucleus(image, cell)))
    assert len(scores) >= 5
    assert np.mean(scores) > 0.8, scores


def test_uniform_cells_have_no_nucleus_and_red_cells_are_skipped():
    image = torch.full((3, 20, 20), 0.6)
    cell = np.zeros((20, 20), bool)
    cell[4:16, 4:16] = True
    assert not split_nucleus(image, cell).any()
    image[:, 8:12, 8:12] = 0.2
    masks = np.stack([cell, cell]).astype(np.uint8)
    nuc = nuclei_for(image, masks, ["white_cell", "red_cell"])
    assert nuc[0].sum() > 0 and nuc[1].sum() == 0
