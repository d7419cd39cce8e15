import numpy as np
import torch

from hemaseg.data.contract import make_target
from hemaseg.model import ModelConfig, build_model, load_model, save_checkpoint
from hemaseg.predict import PredictConfig, predict_cells
from hemaseg.unet import UNetSegmenter


def _disks(h, w, centres, r):
    yy, xx = np.mgrid[:h, :w]
    return np.stack([((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) for cy, cx in centres]).astype(np.uint8)


def test_connected_components_are_the_instances_touching_cells_merge():
    model = UNetSegmenter(width=4)
    apart = torch.from_numpy(_disks(40, 60, [(20, 12), (20, 45)], 8).max(0)).float()
    touching = torch.from_numpy(_disks(40, 60, [(20, 20), (20, 34)], 8).max(0)).float()
    assert len(model._instances(apart)["masks"]) == 2
    merged = model._instances(touching)
    assert len(merged["masks"]) == 1  # what a semantic model cannot do: split touching cells
    assert merged["masks"].shape == (1, 1, 40, 60) and merged["scores"].tolist() == [1.0]


def test_any_image_size_and_a_falling_loss():
    torch.manual_seed(0)
    model = UNetSegmenter(width=8)
    masks = _disks(37, 53, [(18, 15), (18, 38)], 9)
    image = torch.full((3, 37, 53), 0.9)
    image[:, torch.from_numpy(masks.max(0)).bool()] = torch.tensor([0.5, 0.2, 0.6])[:, None]
    target = make_target(masks)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(30):
        loss = sum(model([image], [target]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    out = predict_cells(model, [image], PredictConfig(score_threshold=0.5))[0]
    assert (out.height, out.width) == (37, 53)
    assert len(out) == 2


def test_unet_checkpoint_round_trip(tmp_path):
    cfg = ModelConfig(arch="unet", fpn_channels=8)
    model = build_model(cfg).eval()
    loaded, cfg2 = load_model(save_checkpoint(tmp_path / "u.pt", model, cfg))
    assert cfg2.arch == "unet"
    image = torch.rand(3, 32, 48)
    a = predict_cells(model, [image], PredictConfig(score_threshold=0.0))[0]
    b = predict_cells(loaded, [image], PredictConfig(score_threshold=0.0))[0]
    assert np.array_equal(a.dense(), b.dense())
