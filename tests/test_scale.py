"""The scale estimate (hemaseg.scale): the bundled model on painted smears at known scales, pictures without
cells, the file format, and a short training whose error must fall."""

import numpy as np
import pytest
import torch
from PIL import Image

from hemaseg.data.synthetic import SynthConfig, generate
from hemaseg.model import CheckpointError
from hemaseg.scale import (
    RED_CELL_UM,
    ScaleConfig,
    ScaleEstimate,
    ScaleNet,
    ScaleSource,
    ScaleTrainConfig,
    bundled_scale_net,
    estimate_scale,
    load_scale_net,
    negative_view,
    save_scale_net,
    train_scale_net,
)

SYNTH_UM = RED_CELL_UM / 38.0  # SynthConfig.wbc_field paints red cells 34-42 px wide


def _zoomed(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((round(w * factor), round(h * factor)), Image.BILINEAR))


@pytest.fixture(scope="module")
def net():
    found = bundled_scale_net()
    assert found is not None, "the bundled scale model is missing from the package"
    return found


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.25, 2.0])
def test_painted_smears_at_known_scales_give_their_scale_within_10_percent(net, factor):
    # fields the scale model never saw (another seed), zoomed: 0.39 to 0.10 um/px
    errors = []
    for k in range(3):
        image = generate(np.random.default_rng([4242, k]), SynthConfig.wbc_field(480, 640)).image
        est = estimate_scale(net, _zoomed(image, factor))
        assert est.pixel_size is not None and est.source == "estimated"
        errors.append(est.pixel_size / (SYNTH_UM / factor) - 1)
    assert abs(float(np.median(errors))) < 0.10, errors


@pytest.mark.parametrize("kind", ["flat", "text"])
def test_a_picture_without_cells_has_nothing_to_measure_from(net, kind):
    if kind == "flat":
        image = np.full((300, 400, 3), (230, 200, 205), np.uint8)
    else:
        g = torch.Generator().manual_seed(3)
        while True:  # a page of text (negative_view kind 3)
            view = negative_view((300, 400), g)
            if view.std() > 0.05:
                break
        image = (view.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    est = estimate_scale(net, image)
    assert not est.confident
    assert est.pixel_size is None or est.note


def test_estimate_factor_and_description():
    est = ScaleEstimate(0.08)
    assert est.factor(0.16) == 0.5 and est.red_cell_px == 93.75
    none = ScaleEstimate(None, "none", False, note="no blood cells recognised")
    assert none.factor(0.16) == 1.0 and "used as it is" in none.describe()


def test_a_short_training_lowers_the_error_and_the_file_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    images = [generate(np.random.default_rng([1, k]), SynthConfig.wbc_field(160, 160)).image for k in range(6)]
    sources = [ScaleSource("painted", images, SYNTH_UM), ScaleSource("painted, half size", [_zoomed(im, 0.5) for im in images], 2 * SYNTH_UM)]
    cfg = ScaleConfig(widths=(8, 16, 16, 24, 24))
    net, history = train_scale_net(sources, cfg, ScaleTrainConfig(steps=60, batch=8, sizes=(48,), negatives=0.1),
                                   log=lambda s: None, progress=False, record_every=20)
    assert len(history) == 3
    assert history[-1]["abs_log_error"] < 0.5 * history[0]["abs_log_error"]
    path = save_scale_net(tmp_path / "s.pt", net)
    again = load_scale_net(path)
    x = torch.from_numpy(rng.random((2, 3, 40, 40), np.float32))
    assert torch.allclose(net(x), again(x))


def test_a_file_that_is_not_a_scale_model_is_refused(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"format": "something-else"}, bad)
    with pytest.raises(CheckpointError, match="not a hemaseg scale model"):
        load_scale_net(bad)
    (tmp_path / "y.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable scale model"):
        load_scale_net(tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="no such scale model"):
        load_scale_net(tmp_path / "missing.pt")


def test_tiny_images_are_mirrored_out_not_refused(net):
    est = estimate_scale(net, np.full((9, 7, 3), 128, np.uint8))
    assert isinstance(est, ScaleEstimate)


def test_scale_net_output_shape():
    out = ScaleNet(ScaleConfig(widths=(8, 8))).eval()(torch.rand(3, 3, 33, 47))
    assert out.shape == (3, 2)
