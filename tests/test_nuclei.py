import numpy as np
import torch

from hemaseg.data.contract import image_to_tensor
from hemaseg.data.synthetic import WHITE, generate
from hemaseg.metrics import dice
from hemaseg.cells import Cells
from hemaseg.nuclei import assign_nuclei_cells, count_lobes, nuclei_for, split_nucleus


def assign_nuclei(cells: np.ndarray, nuclei: np.ndarray, min_inside: float = 0.5) -> np.ndarray:
    """:func:`assign_nuclei_cells` on dense stacks (``N x H x W`` cells, ``M x H x W`` nuclei): ``N x H x W uint8``."""
    h, w = cells.shape[1:]
    sparse = Cells.from_result({"masks": cells, "labels": np.arange(len(cells)), "scores": np.zeros(len(cells))}, h, w)
    found = Cells.from_result({"masks": nuclei, "labels": np.zeros(len(nuclei)), "scores": np.zeros(len(nuclei))}, h, w)
    sparse.nuclei = assign_nuclei_cells(sparse, found, min_inside)
    out = np.zeros(cells.shape, np.uint8)
    out[sparse.labels] = sparse.dense(nuclei=True)
    return out


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


def test_assign_nuclei_gives_each_nucleus_to_the_cell_holding_it():
    cells = np.zeros((2, 10, 20), np.uint8)
    cells[0, :, :10] = 1
    cells[1, :, 10:] = 1
    nuclei = np.zeros((4, 10, 20), np.uint8)
    nuclei[0, 2:5, 2:5] = 1  # lobe 1 of cell 0
    nuclei[1, 6:9, 2:5] = 1  # lobe 2 of cell 0
    nuclei[2, 3:6, 8:14] = 1  # 6 of its 18 pixels in cell 0, 12 in cell 1: goes to cell 1, clipped
    nuclei[3] = 0  # an empty nucleus is ignored
    out = assign_nuclei(cells, nuclei)
    assert out.dtype == np.uint8 and out.shape == cells.shape
    assert out[0].sum() == 18 and out[0, 2:5, 2:5].all() and out[0, 6:9, 2:5].all()
    assert out[1].sum() == 12 and not (out[1] & ~cells[1].astype(bool)).any()
    stray = np.zeros((1, 10, 20), np.uint8)
    stray[0, 4:6, 8:12] = 1  # half in each cell: < min_inside=0.6 in either
    assert assign_nuclei(cells, stray, min_inside=0.6).sum() == 0
    assert assign_nuclei(cells[:0], nuclei).shape == (0, 10, 20)
    assert assign_nuclei(cells, nuclei[:0]).sum() == 0


def test_nuclei_for_prefers_the_learned_nucleus_and_falls_back_to_the_split():
    image = torch.full((3, 20, 20), 0.6)
    image[:, 8:12, 8:12] = 0.2
    cell = np.zeros((20, 20), np.uint8)
    cell[4:16, 4:16] = 1
    masks = np.stack([cell, cell, cell])
    learned = np.zeros_like(masks)
    learned[0, 5:7, 5:7] = 1  # the model's nucleus for cell 0; none for cell 1
    out = nuclei_for(image, masks, ["white_cell", "white_cell", "red_cell"], learned)
    assert out[0].sum() == 4 and out[0, 5:7, 5:7].all()  # learned, not the dark square
    assert out[1].sum() == 12 and out[1, 9:11, 8:12].all()  # split fallback: the dark square, corners opened
    assert out[2].sum() == 0  # red cell
