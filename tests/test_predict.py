import numpy as np
import torch

from hemaseg.model import ModelConfig, build_model
from hemaseg.predict import PredictConfig, area_caps, predict, predict_cells


def test_sparse_masks_equal_torchvision_pasted_masks():
    torch.manual_seed(0)
    model = build_model(ModelConfig(classes=("a", "b"), scale=1.3, detections_per_image=60)).eval()
    images = [torch.rand(3, 90, 120), torch.rand(3, 64, 64)]
    cfg = PredictConfig(score_threshold=0.0)
    with torch.inference_mode(), area_caps(model, 90 * 120 * 1.3**2):
        reference = model(images)  # torchvision's own postprocess: full-size pasted masks
    cells = predict_cells(model, images, cfg)
    for ref, c, im in zip(reference, cells, images):
        assert len(ref["scores"]) > 5  # random weights: plenty of detections to compare
        masks = (ref["masks"][:, 0] >= 0.5).numpy()
        nonempty = masks.reshape(len(masks), -1).any(1)
        assert np.array_equal(c.dense(), masks[nonempty].astype(np.uint8))
        assert np.allclose(c.scores, ref["scores"][nonempty].numpy()) and c.labels.tolist() == ref["labels"][nonempty].tolist()
        assert (c.height, c.width) == tuple(im.shape[1:])
    dense = predict(model, images[:1], cfg)[0]
    assert dense["masks"].dtype == torch.uint8 and dense["masks"].shape[1:] == (90, 120)
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


def test_a_finer_mask_head_gives_finer_masks_through_the_same_paste():
    torch.manual_seed(0)
    model = build_model(ModelConfig(mask_roi=28, mask_channels=32, detections_per_image=20)).eval()
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == 32
    images = [torch.rand(3, 80, 96)]
    with torch.inference_mode(), area_caps(model, 80 * 96):
        reference = model(images)
        features = model.backbone(model.transform(images)[0].tensors)
        boxes = [torch.tensor([[10.0, 10.0, 60.0, 50.0]])]
        logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(
            model.roi_heads.mask_roi_pool(features, boxes, [(80, 96)])))
    assert logits.shape[-2:] == (56, 56)
    cells = predict_cells(model, images, PredictConfig(score_threshold=0.0))[0]
    masks = (reference[0]["masks"][:, 0] >= 0.5).numpy()
    assert np.array_equal(cells.dense(), masks[masks.reshape(len(masks), -1).any(1)].astype(np.uint8))


def test_segment_diameter_resizes_to_the_models_cell_size(tmp_path):
    import pytest

    from hemaseg.model import save_checkpoint
    from hemaseg.predict import ModelMethod, SegmentConfig

    cfg = ModelConfig(diameter=80.0)
    path = save_checkpoint(tmp_path / "m.pt", build_model(cfg), cfg)
    assert ModelMethod.from_checkpoint(path, SegmentConfig(diameter=160)).model.transform.scale == 0.5
    assert ModelMethod.from_checkpoint(path, SegmentConfig()).model.transform.scale == 1.0
    plain = save_checkpoint(tmp_path / "plain.pt", build_model(ModelConfig()), ModelConfig())
    with pytest.raises(ValueError, match="not trained at a cell diameter"):
        ModelMethod.from_checkpoint(plain, SegmentConfig(diameter=160))
    with pytest.raises(ValueError, match="diameter must be > 0"):
        SegmentConfig(diameter=0)
