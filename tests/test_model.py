import json
import urllib.error

import numpy as np
import pytest
import torch
from torchvision.models import ResNet18_Weights

from hemaseg.model import (
    CheckpointError, ModelConfig, build_model, load_model, read_checkpoint, save_checkpoint,
)
from hemaseg.predict import PredictConfig, predict_cells


def test_config_json_round_trip():
    cfg = ModelConfig(classes=("red_cell", "white_cell"), scale=1.5)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.num_classes == 3
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelConfig(arch="resnet999")
    with pytest.raises(ValueError, match="COCO weights exist only"):
        ModelConfig(pretrained="coco")
    with pytest.raises(ValueError, match="roi_batch_size must be >= 1, got 0"):
        ModelConfig(roi_batch_size=0)


def test_the_training_sampling_options_reach_the_model():
    from hemaseg.model import build_model

    model = build_model(ModelConfig(roi_batch_size=32, rpn_post_nms_train=150))
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    assert model.rpn._post_nms_top_n["training"] == 150 and model.rpn._pre_nms_top_n["training"] == 2000


def test_default_model_keeps_a_crop_at_native_size_and_the_recipe_blows_it_up():
    image = [torch.rand(3, 120, 120)]
    compact = build_model(ModelConfig()).eval()
    batch, _ = compact.transform(image)
    assert tuple(batch.image_sizes[0]) == (120, 120)
    recipe = build_model(ModelConfig.recipe()).eval()
    batch, _ = recipe.transform(image)
    assert tuple(batch.image_sizes[0]) == (800, 800)
    scaled = build_model(ModelConfig(scale=2.0, max_size=200)).eval()
    batch, _ = scaled.transform([torch.rand(3, 120, 60)])
    assert tuple(batch.image_sizes[0]) == (200, 100)  # 2x capped by max_size on the long side


def test_compact_default_is_much_smaller_than_the_recipe():
    small = sum(p.numel() for p in build_model(ModelConfig()).parameters())
    big = sum(p.numel() for p in build_model(ModelConfig.recipe()).parameters())
    assert small < big / 2.5


def test_heads_sized_to_classes():
    model = build_model(ModelConfig(classes=("a", "b", "c")))
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4


def test_pretrained_offline_gives_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="could not download torchvision's .*IMAGENET1K_V1.*offline.*--pretrained none"):
        build_model(ModelConfig(pretrained="imagenet"))


def test_checkpoint_save_load_gives_identical_predictions(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(classes=("cell", "other"), box_score_threshold=0.0)
    model = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, epoch=3)
    loaded, cfg2 = load_model(path)
    assert cfg2 == cfg and not loaded.training
    images = [torch.rand(3, 64, 80), torch.rand(3, 50, 50)]
    a = predict_cells(model, images, PredictConfig(score_threshold=0.0))
    b = predict_cells(loaded, images, PredictConfig(score_threshold=0.0))
    assert len(a[0]) > 0
    for x, y in zip(a, b):
        for key in ("boxes", "labels", "scores"):
            assert np.array_equal(getattr(x, key), getattr(y, key)), key
        assert np.array_equal(x.dense(), y.dense())
    assert read_checkpoint(path)["epoch"] == 3


def test_resnet50_fpn_has_torchvisions_structure_so_coco_weights_fit(monkeypatch, tmp_path):
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn

    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    torch.manual_seed(1)
    coco_cfg = ModelConfig(arch="resnet50_fpn", classes=tuple(f"c{i}" for i in range(90)), pretrained="coco")
    fake_coco = build_model(coco_cfg, download=False).state_dict()  # stands in for the download
    shapes = {k: tuple(v.shape) for k, v in reference.items() if not k.endswith("num_batches_tracked")}
    assert shapes == {k: tuple(v.shape) for k, v in fake_coco.items()}

    monkeypatch.setattr(MaskRCNN_ResNet50_FPN_Weights, "get_state_dict", lambda *a, **k: fake_coco)
    cfg = ModelConfig(arch="resnet50_fpn", classes=("cell",), pretrained="coco")
    torch.manual_seed(2)
    model = build_model(cfg)
    state = model.state_dict()
    key = "backbone.body.layer3.0.conv1.weight"
    assert torch.equal(state[key], fake_coco[key])
    assert state["roi_heads.box_predictor.cls_score.weight"].shape == (2, 1024)  # new head for 1 class + bg
    assert not model.backbone.body.conv1.weight.requires_grad  # stem frozen, as torchvision does
    # a checkpoint of a pretrained model loads without any download
    monkeypatch.setattr(MaskRCNN_ResNet50_FPN_Weights, "get_state_dict", lambda *a, **k: 1 / 0)
    loaded, cfg2 = load_model(save_checkpoint(tmp_path / "p.pt", model, cfg))
    assert cfg2.pretrained == "coco"
    assert torch.equal(loaded.state_dict()[key], fake_coco[key])


def test_compressed_checkpoint_is_a_quarter_and_loads_to_nearly_the_same_model(tmp_path):
    from hemaseg.model import compress_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(classes=("cell", "nucleus"))
    model = build_model(cfg).eval()
    full = save_checkpoint(tmp_path / "full.pt", model, cfg, epoch=7, data_diameters={"d": 75.0})
    small = compress_checkpoint(full, tmp_path / "small.pt")
    assert small.stat().st_size < 0.3 * full.stat().st_size
    ckpt = read_checkpoint(small)
    assert ckpt["epoch"] == 7 and ckpt["data_diameters"] == {"d": 75.0} and "model_int8" not in ckpt
    loaded, cfg2 = load_model(small)
    assert cfg2 == cfg
    x = torch.rand(1, 3, 96, 96)
    with torch.inference_mode():
        a, b = model.backbone(x)["0"], loaded.backbone(x)["0"]
    assert (a - b).abs().mean() < 0.03 * a.abs().mean()  # 8-bit weights through 20 random layers: ~2%
    broken = {**torch.load(small, weights_only=True), "model_int8_scale": {}}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="do not match the digest"):
        read_checkpoint(tmp_path / "broken.pt")
    del broken["digest"]  # a file written before digests: its structure is still checked
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="without their scales"):
        read_checkpoint(tmp_path / "broken.pt")
