import numpy as np
import pytest
import torch

from hemaseg.data.contract import add_nucleus_instances, make_target
from hemaseg.model import ModelConfig, build_model, load_model, save_checkpoint
from hemaseg.outline import MaskRCNNWithOutline, OutlineHead, foreground_maps, refine_outlines
from hemaseg.predict import PredictConfig, predict_cells
from hemaseg.cells import Cells


def _cells(h, w, boxes, labels=None, scores=None):
    """Cells whose masks fill their boxes (XYXY, exclusive ends)."""
    boxes = np.array(boxes, np.int64).reshape(-1, 4)
    masks = [np.ones((y1 - y0, x1 - x0), bool) for x0, y0, x1, y1 in boxes]
    n = len(boxes)
    return Cells(h, w, boxes, masks, np.asarray(scores if scores is not None else np.ones(n), np.float32),
                 np.asarray(labels if labels is not None else np.ones(n), np.int64))


def test_a_cell_grows_and_shrinks_to_the_foreground_near_it():
    cells = _cells(20, 20, [[5, 5, 15, 15]])
    fg = np.zeros((20, 20), bool)
    fg[4:15, 6:16] = True  # one row higher, one column right of the mask, not its left column
    out = refine_outlines(cells, fg, radius=2)
    assert out.boxes.tolist() == [[6, 4, 16, 15]] and out.masks[0].all()
    assert out.union().sum() == fg.sum()
    far = fg.copy()
    far[0:2, 0:20] = True  # foreground beyond the radius is nobody's
    assert np.array_equal(refine_outlines(cells, far, radius=2).union(), fg)
    assert cells.boxes.tolist() == [[5, 5, 15, 15]]  # the input is left alone


def test_touching_cells_split_the_foreground_by_nearness_and_keep_their_own_pixels():
    cells = _cells(10, 20, [[2, 2, 9, 8], [10, 2, 17, 8]])  # a 1-px gap at column 9
    fg = np.zeros((10, 20), bool)
    fg[2:8, 1:18] = True  # one blob covering both, the gap and a column beyond each
    out = refine_outlines(cells, fg, radius=1.5)
    lab = out.label_image()
    assert set(np.unique(lab[2:8, 1:9])) == {1} and set(np.unique(lab[2:8, 10:18])) == {2}
    assert lab[2:8, 9].all()  # the gap went to one of them, not lost
    assert out.union().sum() == fg.sum()


def test_a_cell_keeps_its_mask_where_the_foreground_disagrees():
    cells = _cells(30, 30, [[10, 10, 20, 20]])
    none = np.zeros((30, 30), bool)
    assert np.array_equal(refine_outlines(cells, none, radius=3).union(), cells.union())
    huge = np.ones((30, 30), bool)  # grown by the full radius all round: (10 + 6)^2 / 10^2 > 1.4
    assert np.array_equal(refine_outlines(cells, huge, radius=3).union(), cells.union())
    assert refine_outlines(cells, huge, radius=3, area_range=(0.5, 3.0)).union().sum() > 200


def test_nuclei_and_empty_images_are_left_alone():
    cells = _cells(20, 20, [[2, 2, 12, 12], [4, 4, 8, 8]], labels=[1, 2])
    fg = np.zeros((20, 20), bool)
    fg[2:12, 2:11] = True
    out = refine_outlines(cells, fg, radius=2, skip_label=2)
    assert out.boxes.tolist() == [[2, 2, 11, 12], [4, 4, 8, 8]] and out.masks[1].all()
    empty = Cells(5, 5)
    assert len(refine_outlines(empty, np.ones((5, 5), bool), radius=2)) == 0


def test_holes_are_filled_and_stray_bits_dropped():
    cells = _cells(20, 20, [[4, 4, 16, 16]])
    fg = np.zeros((20, 20), bool)
    fg[4:16, 4:16] = True
    fg[9:11, 9:11] = False  # a hole (a pale nucleus the foreground missed)
    fg[4:16, 17] = True  # a bit within the radius but apart from the cell: not the cell's
    fg[4:16, 16] = False
    out = refine_outlines(cells, fg, radius=2)
    assert out.union()[9:11, 9:11].all() and not out.union()[:, 17].any()


def _sample():
    masks = np.zeros((2, 64, 64), np.uint8)
    masks[0, 8:30, 8:30] = 1
    masks[1, 36:58, 30:56] = 1
    nuclei = np.zeros_like(masks)
    nuclei[0, 14:22, 14:22] = 1
    image = torch.full((3, 64, 64), 0.9)
    image[:, masks.any(0)] = 0.4
    return image, make_target(masks, nuclei=nuclei)


def test_the_outline_head_trains_with_the_model_on_the_cells_not_the_nuclei():
    torch.manual_seed(0)
    cfg = ModelConfig(classes=("cell", "nucleus"), outline=4)
    model = build_model(cfg)
    assert isinstance(model, MaskRCNNWithOutline) and model.outline_skip_label == 2
    image, target = _sample()
    target = add_nucleus_instances(target, 2)
    model.train()
    losses = model([image], [target])
    assert {"loss_mask", "loss_objectness", "loss_outline", "loss_outline_dice"} <= set(losses)
    batch, targets = model.transform([image], [target])
    opt = torch.optim.AdamW(model.outline.parameters(), lr=1e-2)
    curve = []
    for _ in range(40):
        losses = model.outline.loss(batch.tensors, batch.image_sizes, targets, model.outline_skip_label)
        opt.zero_grad()
        (losses["loss_outline"] + losses["loss_outline_dice"]).backward()
        opt.step()
        curve.append(float(losses["loss_outline"].detach()))
    assert curve[-1] < 0.3 * curve[0]
    # what it learned is the cells' union: the nucleus, inside cell 0, is foreground too, the background is not
    model.eval()
    batch, _ = model.transform([image])
    fg = foreground_maps(model, batch.tensors, batch.image_sizes, [(64, 64)])[0]  # eval mode: as trained
    cells_union = target["masks"][target["labels"] == 1].amax(0).numpy().astype(bool)
    assert (fg == cells_union).mean() > 0.95


def test_outline_head_sees_each_image_alone_whatever_the_batch():
    torch.manual_seed(0)
    head = OutlineHead(4).train()
    small, big = torch.rand(3, 30, 45), torch.rand(3, 64, 64)
    batch = torch.zeros(2, 3, 64, 64)
    batch[0, :, :30, :45], batch[1] = small, big
    together = head(batch, [(30, 45), (64, 64)])
    assert [tuple(t.shape) for t in together] == [(30, 45), (64, 64)]
    alone = head(small[None], [(30, 45)])[0]  # no padding from a bigger neighbour changes it, in training or not
    assert torch.allclose(together[0], alone, atol=1e-5)
    head.eval()
    assert torch.allclose(head(batch, [(30, 45), (64, 64)])[0], alone, atol=1e-5)
    with pytest.raises(ValueError, match="outline"):
        ModelConfig(arch="unet", outline=8)


def test_a_model_with_an_outline_saves_loads_and_predicts(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(outline=4, diameter=40.0)
    model = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, cfg)
    loaded, lcfg = load_model(path)
    assert lcfg.outline == 4 and isinstance(loaded, MaskRCNNWithOutline)
    images = [torch.rand(3, 48, 64)]
    a = predict_cells(model, images, PredictConfig(score_threshold=0.0))[0]
    b = predict_cells(loaded, images, PredictConfig(score_threshold=0.0))[0]
    assert len(a) == len(b) and np.array_equal(a.union(), b.union())
    model.transform.scale = 0.5  # the model sees it at half size: maps and cells come back at the input's size
    c = predict_cells(model, images, PredictConfig(score_threshold=0.0))[0]
    assert (c.height, c.width) == (48, 64)
    old = {k: v for k, v in ModelConfig().to_dict().items() if k not in ("outline", "outline_levels")}
    assert ModelConfig.from_dict(old).outline == 0 and ModelConfig.from_dict(old).outline_levels == 4
    deeper = build_model(ModelConfig(outline=4, outline_levels=5))
    assert deeper.outline.net.multiple == 16 and len(deeper.outline.net.down) == 5


def test_the_outline_head_runs_only_on_images_with_cells_to_redraw():
    """A field without white cells (most red-cell fields) skips the full-resolution U-Net: the same result,
    and the cells of the other images in the batch are redrawn as when each goes alone."""
    import dataclasses

    from hemaseg.data.synthetic import SynthConfig, generate
    from hemaseg.model import default_model

    model, _ = load_model(default_model())
    seen = []
    forward = model.outline.forward
    model.outline.forward = lambda tensors, sizes: (seen.append(list(sizes)), forward(tensors, sizes))[1]
    cfg = dataclasses.replace(SynthConfig.wbc_field(240, 320), white_radius=(40, 48))
    field = torch.from_numpy(generate(np.random.default_rng(3), cfg).image).permute(2, 0, 1).float() / 255
    blank = torch.full_like(field, 0.9)  # the smear's background, nothing on it
    together = predict_cells(model, [blank, field])
    assert len(together[0]) == 0 and len(together[1]) > 0
    assert len(seen) == 1 and len(seen[0]) == 1  # the U-Net saw the field only
    alone = predict_cells(model, [field])[0]
    assert len(seen) == 2 and np.array_equal(alone.union(), together[1].union())
