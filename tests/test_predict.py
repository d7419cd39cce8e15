import numpy as np
import torch

from hemaseg.model import ModelConfig, build_model
from hemaseg.predict import PredictConfig, area_caps, predict_cells


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _roundtrip(truth: np.ndarray, m: int, resized: tuple[int, int] | None = None):
    """A true mask cut by RoIAlign in its box (as torchvision makes mask targets), optionally in the image
    resized to ``resized``, and put back by hemaseg.predict._sparse: the mask a perfect model would give."""
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    from hemaseg.data.contract import masks_to_boxes
    from hemaseg.predict import _sparse

    t = torch.from_numpy(truth[None].astype(np.uint8))
    if resized is not None:
        t = (torch.nn.functional.interpolate(t[None].float(), size=resized, mode="bilinear")[0] >= 0.5).byte()
    box = masks_to_boxes(t)
    probs = project_masks_on_boxes(t, box, torch.zeros(1, dtype=torch.int64), m)[:, None]
    det = {"masks": probs, "boxes": box, "scores": torch.ones(1), "labels": torch.ones(1, dtype=torch.int64)}
    return _sparse(det, tuple(t.shape[1:]), truth.shape, PredictConfig()).union()


def _iou_and_shift(a: np.ndarray, b: np.ndarray):
    ya, xa = np.nonzero(a)
    yb, xb = np.nonzero(b)
    return (a & b).sum() / (a | b).sum(), (xa.mean() - xb.mean(), ya.mean() - yb.mean())


def test_true_masks_come_back_in_place_through_the_mask_grid():
    truth = _disc(120, 120, 57.3, 61.8, 36.5)  # a dataset1-sized cell
    iou, (dx, dy) = _iou_and_shift(_roundtrip(truth, 56), truth)
    assert iou > 0.995 and abs(dx) < 0.1 and abs(dy) < 0.1
    iou28, _ = _iou_and_shift(_roundtrip(truth, 28), truth)
    assert 0.985 < iou28 < iou
    # the model saw the image at half size: the mask goes back to the input's pixels, still in place
    iou_half, (dx, dy) = _iou_and_shift(_roundtrip(truth, 56, resized=(60, 60)), truth)
    assert iou_half > 0.97 and abs(dx) < 0.2 and abs(dy) < 0.2


def test_torchvisions_paste_shifts_the_same_masks_up_and_left():
    """What the mask grid replaced: torchvision's paste_masks_in_image on the same RoIAlign targets."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes

    from hemaseg.data.contract import masks_to_boxes

    truth = _disc(120, 120, 57.3, 61.8, 36.5)
    t = torch.from_numpy(truth[None].astype(np.uint8))
    box = masks_to_boxes(t)
    probs = project_masks_on_boxes(t, box, torch.zeros(1, dtype=torch.int64), 56)[:, None]
    theirs = paste_masks_in_image(probs, box, (120, 120))[0, 0].numpy() >= 0.5
    iou, (dx, dy) = _iou_and_shift(theirs, truth)
    assert iou < 0.98 and dx < -0.3 and dy < -0.3
    assert _iou_and_shift(_roundtrip(truth, 56), truth)[0] > iou + 0.015


def test_sparse_masks_match_torchvision_detections():
    torch.manual_seed(0)
    model = build_model(ModelConfig(classes=("a", "b"), scale=1.3, detections_per_image=60)).eval()
    images = [torch.rand(3, 90, 120), torch.rand(3, 64, 64)]
    cfg = PredictConfig(score_threshold=0.0, amp=False)  # float32, as torchvision's own forward
    with torch.inference_mode(), area_caps(model, 90 * 120 * 1.3**2):
        reference = model(images)  # torchvision's own postprocess: the same detections, full-size pasted masks
    cells = predict_cells(model, images, cfg)
    for ref, c, im in zip(reference, cells, images):
        assert len(ref["scores"]) > 5  # random weights: plenty of detections to compare
        masks = (ref["masks"][:, 0] >= 0.5).numpy()
        nonempty = masks.reshape(len(masks), -1).any(1)
        # the same detections in the same order (a few tiny masks are empty in one paste, not the other);
        # where the masks go is tested above on true masks (random weights give masks near 0.5 everywhere)
        assert abs(len(c) - nonempty.sum()) <= 0.1 * len(c)
        index = [int(np.flatnonzero(ref["scores"].numpy() == s)[0]) for s in c.scores]
        assert index == sorted(index) and c.labels.tolist() == ref["labels"][index].tolist()
        assert (c.height, c.width) == tuple(im.shape[1:])
    assert model.training is False and model.roi_heads.score_thresh == 0.05  # restored


def test_caps_follow_the_image_area_with_a_floor_and_are_restored():
    from hemaseg.predict import area_caps

    model = build_model(ModelConfig(rpn_post_nms_test=1000, detections_per_image=1000))
    with area_caps(model, 2048 * 2048):
        assert model.rpn._post_nms_top_n["testing"] == 4000 and model.roi_heads.detections_per_img == 4000
    assert model.rpn._post_nms_top_n["testing"] == 1000 and model.roi_heads.detections_per_img == 1000
    with area_caps(model, 512 * 512):
        assert model.rpn._post_nms_top_n["testing"] == 250
    with area_caps(model, 120 * 120):  # a crop: the floor
        assert model.rpn._post_nms_top_n["testing"] == model.roi_heads.detections_per_img == 100
    assert model.rpn._pre_nms_top_n["testing"] == 1000


def test_a_finer_mask_head_gives_finer_masks():
    torch.manual_seed(0)
    model = build_model(ModelConfig(mask_roi=28, mask_channels=32, detections_per_image=20)).eval()
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == 32
    images = [torch.rand(3, 80, 96)]
    with torch.inference_mode():
        features = model.backbone(model.transform(images)[0].tensors)
        boxes = [torch.tensor([[10.0, 10.0, 60.0, 50.0]])]
        logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(
            model.roi_heads.mask_roi_pool(features, boxes, [(80, 96)])))
    assert logits.shape[-2:] == (56, 56)
    assert len(predict_cells(model, images, PredictConfig(score_threshold=0.0))[0]) > 0


def test_segment_diameter_resizes_to_the_models_cell_size(tmp_path):
    import pytest

    from hemaseg.model import save_checkpoint
    from hemaseg.predict import ModelMethod, SegmentConfig

    from hemaseg.predict import image_scale

    cfg = ModelConfig(diameter=80.0)
    path = save_checkpoint(tmp_path / "m.pt", build_model(cfg), cfg)
    image = np.zeros((32, 32, 3), np.uint8)
    for seg, want in ((SegmentConfig(diameter=160), 0.5), (SegmentConfig(), 1.0)):
        method = ModelMethod.from_checkpoint(path, seg)
        factor = image_scale(method, image, seg).resize
        assert factor == want
        with method.zoomed(factor):  # the model resizes inside, for the block only
            assert method.model.transform.scale == want
        assert method.model.transform.scale == 1.0
    plain = save_checkpoint(tmp_path / "plain.pt", build_model(ModelConfig()), ModelConfig())
    with pytest.raises(ValueError, match="not trained at a cell diameter"):
        ModelMethod.from_checkpoint(plain, SegmentConfig(diameter=160))
    with pytest.raises(ValueError, match="diameter must be 4-4000 px"):
        SegmentConfig(diameter=0)
    for bad in (-0.1, 0.0, float("nan")):
        with pytest.raises(ValueError, match="pixel size must be 0.005-50 um/px"):
            SegmentConfig(pixel_size=bad)


def test_amp_runs_the_convolutions_in_bfloat16_and_finds_the_same_cells(monkeypatch):
    import hemaseg.predict as predict_module
    from hemaseg.data.contract import image_to_tensor
    from hemaseg.data.synthetic import SynthConfig, generate
    from hemaseg.cells import iou_matrix_cells
    from hemaseg.model import default_model, load_model

    monkeypatch.setattr(predict_module, "cpu_has_native_bf16", lambda: True)  # the same path on any CPU
    model, _ = load_model(default_model())
    seen = []
    model.backbone.body.register_forward_hook(lambda m, i, out: seen.append(next(iter(out.values())).dtype))
    model.outline.register_forward_hook(lambda m, i, out: seen.append(out[0].dtype))
    image = image_to_tensor(generate(np.random.default_rng(3), SynthConfig.wbc_field(256, 256, white=(2, 2))).image)
    fp32 = predict_module.predict_cells(model, [image], predict_module.PredictConfig(amp=False))[0]
    assert seen == [torch.float32, torch.float32]
    bf16 = predict_module.predict_cells(model, [image], predict_module.PredictConfig(amp=True))[0]
    assert seen[2:] == [torch.bfloat16, torch.bfloat16]
    assert len(fp32) == len(bf16) >= 2 and bf16.boxes.dtype == fp32.boxes.dtype
    iou = iou_matrix_cells(fp32, bf16)
    assert iou.max(axis=1).min() > 0.97  # every cell found again, outline within about a pixel


def test_run_methods_batches_images_of_one_size_and_finds_the_same_cells():
    from hemaseg.data.synthetic import SynthConfig, generate
    from hemaseg.model import default_model
    from hemaseg.predict import ModelMethod, SegmentConfig, run_method, run_methods

    cfg = SegmentConfig(batch=2, tile=400, overlap=60)
    method = ModelMethod.from_checkpoint(default_model(), cfg)
    calls = []
    many = method.many
    method.many = lambda images: calls.append([tuple(im.shape[1:]) for im in images]) or many(images)
    rng = np.random.default_rng(5)
    smear = lambda h, w: generate(rng, SynthConfig.wbc_field(h, w, white=(1, 1))).image  # noqa: E731  HWC uint8
    images = [smear(160, 160), smear(120, 176), smear(160, 160), smear(160, 160), smear(520, 480)]  # the last: 4 tiles
    together = run_methods(method, images, cfg)
    assert calls[:3] == [[(160, 160)] * 2, [(160, 160)], [(120, 176)]]  # by size, 2 at a time; then the tiles alone
    assert len(calls) == 3 + 4 and all(len(c) == 1 for c in calls[3:])
    alone = [run_method(method, im, cfg) for im in images]
    assert sum(len(c) for c in alone) >= 5
    calls.clear()  # no more pixels in one call than a tile holds: two 160x160 images fill a 240x240 tile ...
    run_methods(method, images[:4], SegmentConfig(batch=4, tile=240, overlap=60))
    assert calls == [[(160, 160)] * 2, [(160, 160)], [(120, 176)]]  # ... the third comes alone
    for a, b in zip(together, alone):  # batching changes nothing: the same label images, the same scores
        assert np.array_equal(a.label_image(), b.label_image()) and np.allclose(a.scores, b.scores, atol=1e-4)
