import numpy as np
import pytest
import torch

from hemaseg.data.contract import empty_target, make_target, masks_to_boxes, validate_target
from hemaseg.data.transforms import (
    AugmentConfig, ColorJitter, Compose, RandomFlip, RandomRot90, RandomScale, ResizeShortSide, StainJitter,
    build_train_transforms,
)


def _sample(h=30, w=50):
    """A non-square image whose red channel marks the cells, so image and masks can be compared."""
    masks = np.zeros((3, h, w), np.uint8)
    masks[0, 2:10, 3:20] = 1
    masks[1, 15:28, 30:49] = 1
    masks[2, 0:4, 45:50] = 1  # touches the corner
    nuclei = masks.copy()
    nuclei[:, :, ::2] = 0
    image = torch.zeros(3, h, w)
    image[0] = torch.from_numpy(masks.any(0).astype(np.float32))
    image[1] = torch.linspace(0, 1, w)[None, :].expand(h, w)
    return image, make_target(masks, [1, 2, 1], nuclei)


def _check(image, target):
    validate_target(image, target)
    m = target["masks"]
    assert torch.equal(target["boxes"], masks_to_boxes(m))
    for box, mask in zip(target["boxes"], m):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        x1, y1, x2, y2 = box.tolist()
        assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2
    assert (target["nuclei"] <= m).all()


GEOMETRIC = [RandomFlip(p=1.0), RandomRot90(), RandomScale(0.5, 2.0), ResizeShortSide(224), ResizeShortSide(17)]


@pytest.mark.parametrize("transform", GEOMETRIC, ids=lambda t: type(t).__name__)
def test_boxes_enclose_masks_after_every_transform(transform):
    torch.manual_seed(0)
    for _ in range(8):
        image, target = transform(*_sample())
        _check(image, target)
        # the image moved with the masks: the red channel still marks the cells
        red = image[0] > 0.5
        cells = target["masks"].any(0)
        assert (red == cells).float().mean() > 0.94


def test_full_training_pipeline_keeps_the_contract():
    torch.manual_seed(0)
    pipeline = build_train_transforms(AugmentConfig())
    for _ in range(20):
        _check(*pipeline(*_sample()))


def test_flip_is_exact():
    image, target = _sample()
    out_img, out = RandomFlip(p=1.0)(image, target)  # both axes
    assert torch.equal(out["masks"], target["masks"].flip(-1).flip(-2))
    assert torch.equal(out_img, image.flip(-1).flip(-2))
    assert out["boxes"][0].tolist() == [50 - 20, 30 - 10, 50 - 3, 30 - 2]


def test_resize_short_side_scales_boxes_on_both_axes():
    """The recipe's bug: Resize(224) scales the short side, boxes were scaled by 224 / width."""
    image, target = _sample(h=30, w=50)
    out_img, out = ResizeShortSide(60)(image, target)  # factor 2 on both axes
    assert out_img.shape == (3, 60, 100)
    assert out["boxes"][0].tolist() == [6, 4, 40, 20]
    assert out["boxes"][1].tolist() == [60, 30, 98, 56]


def test_rot90_keeps_pixels():
    torch.manual_seed(1)
    image, target = _sample()
    seen = set()
    for _ in range(12):
        out_img, out = RandomRot90()(image, target)
        seen.add(tuple(out_img.shape))
        assert int(out["masks"].sum()) == int(target["masks"].sum())
    assert seen == {(3, 30, 50), (3, 50, 30)}


def test_scale_drops_cells_that_vanish_and_keeps_empty_targets_valid():
    masks = np.zeros((1, 40, 40), np.uint8)
    masks[0, 0, 0] = 1
    image, target = torch.zeros(3, 40, 40), make_target(masks)
    out_img, out = RandomScale(0.1, 0.1)(image, target)
    assert out_img.shape == (3, 4, 4)
    validate_target(out_img, out)
    pipeline = build_train_transforms(AugmentConfig())
    img, empty = pipeline(torch.rand(3, 20, 24), empty_target(20, 24, with_nuclei=True))
    validate_target(img, empty)
    assert empty["masks"].shape[0] == 0


def test_colour_transforms_touch_the_image_only_and_stay_in_range():
    torch.manual_seed(2)
    image, target = _sample()
    image = image * 0.8 + 0.1
    for t in (ColorJitter(0.5, 0.1), StainJitter(0.2, 0.1), Compose([StainJitter(), ColorJitter()])):
        out_img, out = t(image.clone(), target)
        assert out is target
        assert out_img.shape == image.shape and out_img.dtype == torch.float32
        assert 0 <= float(out_img.min()) and float(out_img.max()) <= 1
        assert not torch.allclose(out_img, image, atol=1e-3)


def test_stain_jitter_with_zero_strength_is_nearly_identity():
    image = torch.rand(3, 16, 16) * 0.8 + 0.1
    out, _ = StainJitter(0.0, 0.0)(image, empty_target(16, 16))
    assert torch.allclose(out, image, atol=1e-5)
