import numpy as np
import pytest
import torch
from skimage.measure import label as connected

from hemaseg.metrics import match
from hemaseg.predict import Method
from hemaseg.cells import Cells
from hemaseg.tiling import in_core, merge_cells, segment_tiled, tile_boxes, tiles


def _disks(h=600, w=700, n=140, seed=0):
    """HWC uint8 field of dark, non-touching disks (radius 6-22) on a light background, and its labels."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.int32)
    count = 0
    for _ in range(n * 5):
        r = rng.integers(6, 23)
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        y0, y1, x0, x1 = max(0, cy - r - 2), min(h, cy + r + 3), max(0, cx - r - 2), min(w, cx + r + 3)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        window = lab[y0:y1, x0:x1]
        if not (window[d2 <= (r + 2) ** 2] > 0).any():
            count += 1
            window[d2 <= r * r] = count
        if count == n:
            break
    image = np.where(lab[..., None] > 0, 60, 220).astype(np.uint8).repeat(3, axis=2)
    return image, lab


def components(image: torch.Tensor) -> dict:
    """A 'method' that sees dark blobs of the crop it is given (cut at the crop's edge, like a model)."""
    lab = connected(image[0].numpy() < 0.5)
    ids = np.arange(1, lab.max() + 1)
    masks = torch.from_numpy((lab[None] == ids[:, None, None]).astype(np.uint8))
    areas = masks.flatten(1).sum(1).float()
    return {"masks": masks, "labels": torch.ones(len(ids), dtype=torch.int64), "scores": areas / (areas.max() + 1) if len(ids) else areas}


class Components(Method):
    """:func:`components` as a segmentation method (for segment/evaluate/export tests)."""

    name = "components"

    def __call__(self, image):
        return components(image)


def test_tile_boxes_cover_the_image_with_the_overlap():
    boxes = tile_boxes(1000, 2048, tile=512, overlap=128)
    cover = np.zeros((1000, 2048), int)
    for x0, y0, x1, y1 in boxes:
        assert x1 - x0 <= 512 and y1 - y0 <= 512
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    xs = sorted({b[0] for b in boxes})
    assert all(b - a <= 512 - 128 for a, b in zip(xs, xs[1:]))
    with pytest.raises(ValueError, match="must exceed overlap"):
        tile_boxes(10, 10, tile=64, overlap=64)


def test_tile_cores_partition_the_image_inside_their_crops():
    h, w, overlap = 1000, 2048, 128
    cover = np.zeros((h, w), int)
    for (x0, y0, x1, y1), (cx0, cy0, cx1, cy1) in tiles(h, w, tile=512, overlap=overlap):
        cover[int(cy0):int(cy1), int(cx0):int(cx1)] += 1
        for inner, margin in ((x0 > 0, cx0 - x0), (y0 > 0, cy0 - y0), (x1 < w, x1 - cx1), (y1 < h, y1 - cy1)):
            assert margin >= (overlap / 2 if inner else 0)
    assert (cover == 1).all()
    boxes = np.array([[0, 0, 10, 10], [85, 0, 100, 10], [80, 0, 90, 10]])  # centres x = 5, 92.5, 85
    assert in_core(boxes, (0, 0, 90, 100)).tolist() == [True, False, True]


def test_tiled_segmentation_finds_the_same_cells_as_untiled_and_no_seam_duplicates():
    image, truth = _disks()
    whole = segment_tiled(components, image, tile=1024)  # one tile
    tiled = segment_tiled(components, image, tile=160, overlap=64)
    assert len(whole) == truth.max() == 140
    assert len(tiled) == len(whole)  # no duplicates, none lost
    m = match(whole.dense(), tiled.dense(), 0.5)
    assert m.f1 == 1.0 and m.mean_matched_iou == 1.0
    assert np.array_equal(tiled.label_image() > 0, truth > 0)


def test_merge_keeps_the_better_duplicate_and_distinct_cells():
    m = np.ones((10, 10), bool)
    a = Cells(50, 50, np.array([[0, 0, 10, 10]]), [m], np.array([0.6], np.float32), np.array([1]))
    b = Cells(50, 50, np.array([[1, 0, 11, 10], [30, 30, 40, 40]]), [m, m], np.array([0.9, 0.5], np.float32), np.array([1, 1]))
    merged = merge_cells(a, b)
    assert sorted(merged.scores.tolist()) == pytest.approx([0.5, 0.9]) and len(merged) == 2
    other_class = Cells(50, 50, np.array([[1, 0, 11, 10]]), [m], np.array([0.9], np.float32), np.array([2]))
    assert len(merge_cells(a, other_class)) == 2  # a platelet over a red cell is not a duplicate


def test_sparse_cells_round_trip_and_the_empty_case():
    result = components(torch.from_numpy(_disks(120, 130, 6)[0]).permute(2, 0, 1).float() / 255)
    cells = Cells.from_result(result, 120, 130)
    assert np.array_equal(cells.dense(), result["masks"].numpy())
    empty = segment_tiled(components, np.full((300, 300, 3), 220, np.uint8), tile=128, overlap=32)
    assert len(empty) == 0 and empty.label_image().shape == (300, 300) and empty.dense().shape == (0, 300, 300)


def test_sparse_iou_matrix_equals_the_dense_one():
    from hemaseg.cells import iou_matrix_cells

    image, _ = _disks(200, 220, 15, seed=4)
    a = segment_tiled(components, image, tile=1024)
    b = segment_tiled(components, np.where(np.arange(220)[None, :, None] < 100, 220, image).astype(np.uint8), tile=1024)
    ta, tb = a.dense().reshape(len(a), -1).astype(float), b.dense().reshape(len(b), -1).astype(float)
    inter = ta @ tb.T  # the dense reference: every pair, full-size masks
    dense = inter / (ta.sum(1)[:, None] + tb.sum(1)[None, :] - inter)
    iou = iou_matrix_cells(a, b)
    assert 0 < (iou > 0.5).sum() < len(a) and np.allclose(iou, dense)


def test_dedupe_drops_the_weaker_of_overlapping_cells_of_one_class():
    from hemaseg.tiling import dedupe_cells

    m = np.ones((10, 10), bool)
    cells = Cells(40, 40, np.array([[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11], [20, 20, 30, 30]]), [m] * 4,
                  np.array([0.5, 0.9, 0.8, 0.7], np.float32), np.array([1, 1, 2, 1]))
    kept = dedupe_cells(cells)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.8, 0.7])  # cell 0 (IoU 0.68 with cell 1) goes; class 2 stays


def test_the_bundled_model_finds_the_same_white_cells_tiled_and_untiled_in_a_2048_px_smear():
    from hemaseg.data.synthetic import WHITE, SynthConfig, generate
    from hemaseg.metrics import MatchCounter
    from hemaseg.model import BUNDLED_MODEL
    from hemaseg.predict import ModelMethod, SegmentConfig, run_method
    from hemaseg.cells import iou_matrix_cells

    s = generate(np.random.default_rng(11), SynthConfig.wbc_field(2048, 2048, white=(40, 40)))
    method = ModelMethod.from_checkpoint(BUNDLED_MODEL, SegmentConfig(nuclei="off"))
    whole = run_method(method, s.image, SegmentConfig(tile=2048, nuclei="off"))
    tiled = run_method(method, s.image, SegmentConfig(tile=512, overlap=192, nuclei="off"))

    def f1(a, b):
        counter = MatchCounter((0.5,))
        counter.add(iou_matrix_cells(a, b))
        return counter.result(0.5).f1

    ids = 1 + np.flatnonzero(s.classes == WHITE)
    truth = Cells.from_labels(np.where(np.isin(s.labels, ids), s.labels, 0))
    assert len(truth) >= 35  # a dense smear: ~2000 red cells around them
    assert f1(whole, tiled) >= 0.98
    assert f1(truth, whole) >= 0.9 and f1(truth, tiled) >= 0.9
    iou = iou_matrix_cells(tiled, tiled)
    np.fill_diagonal(iou, 0)
    assert (iou < 0.5).all()  # no duplicates across seams
