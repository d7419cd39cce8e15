import json

import numpy as np
import pytest
import torch

from hemaseg.data.contract import make_target, validate_target
from hemaseg.data.dataset import CellDataset
from hemaseg.data.fields import DEFAULT_TONES, FieldConfig, compose_field, crop_tones, cut_cells, red_field
from hemaseg.data.formats import open_dataset
from hemaseg.data.synthetic import WHITE, SynthConfig, generate, write_sample
from hemaseg.train import TrainConfig, train


def _crop(h=60, w=70, box=(15, 20, 45, 50), seed=0):
    """A CHW crop with one rectangular cell (y0, x0, y1, x1) holding a 6x6 nucleus, and its target."""
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.uniform(0, 1, (3, h, w)).astype(np.float32))
    m = np.zeros((1, h, w), np.uint8)
    y0, x0, y1, x1 = box
    m[0, y0:y1, x0:x1] = 1
    n = np.zeros_like(m)
    n[0, y0 + 5:y0 + 11, x0 + 5:x0 + 11] = 1
    return image, make_target(m, labels=[2], nuclei=n)


def test_cut_cells_keeps_pixels_mask_nucleus_label_and_a_fading_rim():
    image, target = _crop()
    (c,) = cut_cells(image, target, rim=3)
    assert c.image.shape == (36, 36, 3) and c.mask.sum() == 900 and c.nucleus.sum() == 36 and c.label == 2
    assert np.allclose(c.image, image[:, 12:48, 17:53].permute(1, 2, 0).numpy(), atol=1 / 255)
    assert (c.alpha[c.mask] == 1).all()
    assert c.alpha[0, 0] == 0 and 0 < c.alpha[2, 10] < 1  # rim: 3 px out is gone, 1 px out is half there
    assert c.radius == pytest.approx(np.sqrt(900 / np.pi))
    assert cut_cells(image, make_target(np.zeros((0, 60, 70), np.uint8))) == []


def test_crop_tones_fall_back_when_the_crop_is_all_cell():
    image, _ = _crop()
    full = make_target(np.ones((1, 60, 70), np.uint8))
    plasma, red = crop_tones(image, full)
    assert plasma is DEFAULT_TONES[0] and red is DEFAULT_TONES[1]


def test_red_field_takes_the_given_colours():
    plasma, red = np.array([0.95, 0.9, 0.6], np.float32), np.array([0.8, 0.5, 0.4], np.float32)
    f = red_field(np.random.default_rng(3), 200, 200, (14, 17), 0.4, plasma, red)
    bright = f.mean(axis=2) > np.percentile(f.mean(axis=2), 70)
    assert np.allclose(np.median(f[bright], axis=0), plasma, atol=0.05)
    dark = f.mean(axis=2) < np.percentile(f.mean(axis=2), 10)
    assert np.abs(np.median(f[dark], axis=0) - red).max() < 0.12


def test_compose_field_pastes_cells_exactly_apart_and_inside():
    image, target = _crop()
    cells = cut_cells(image, target) * 3
    cfg = FieldConfig(overhang=0.0)
    out, t = compose_field(np.random.default_rng(0), cells, DEFAULT_TONES, cfg, size=(300, 320))
    validate_target(out, t)
    assert out.shape == (3, 300, 320) and len(t["masks"]) == 3
    assert t["labels"].tolist() == [2, 2, 2]
    assert t["masks"].sum(dim=(1, 2)).tolist() == [900] * 3  # no overhang: every cell whole
    assert t["nuclei"].sum(dim=(1, 2)).tolist() == [36] * 3
    assert t["masks"].sum(dim=0).max() == 1  # no two cells share a pixel
    for m in t["masks"].bool():  # the cell's own pixels, unchanged
        got = out[:, m].T.sort(dim=0).values
        want = image[:, target["masks"][0].bool()].T.sort(dim=0).values
        assert torch.allclose(got, want, atol=1 / 255)
    with pytest.raises(ValueError, match="no cells"):
        compose_field(np.random.default_rng(0), [], DEFAULT_TONES)


def test_compose_field_cells_over_the_edge_are_cut_not_lost_or_moved():
    image, target = _crop()
    cfg = FieldConfig(overhang=0.45)
    areas = []
    for seed in range(20):
        _, t = compose_field(np.random.default_rng(seed), cut_cells(image, target) * 2, DEFAULT_TONES, cfg, size=(90, 90))
        areas += t["masks"].sum(dim=(1, 2)).tolist()
    assert max(areas) == 900 and min(areas) < 900 and min(areas) > 0


@pytest.fixture(scope="module")
def white_crops(tmp_path_factory):
    """Crops annotating white cells only (their red cells unannotated, like Zheng's), with nuclei."""
    root = tmp_path_factory.mktemp("white")
    for k in range(6):
        s = generate(np.random.default_rng([7, k]), SynthConfig(height=96, width=96, white_cells=(1, 1), red_cells=(10, 15)))
        ids = [i + 1 for i, c in enumerate(s.classes) if c == WHITE]
        labels = np.zeros_like(s.labels)
        for new, old in enumerate(ids, 1):
            labels[s.labels == old] = new
        nuclei = np.where(np.isin(s.nuclei, ids), labels, 0)
        write_sample(root, f"crop_{k}", s.image, labels, ["white_cell"] * len(ids), nuclei)
    return root


def test_dataset_turns_the_asked_share_of_samples_into_fields(white_crops):
    src = open_dataset(white_crops)
    plain = CellDataset(src, classes=("white_cell",))
    fields = CellDataset(src, classes=("white_cell",), fields=1.0, field_config=FieldConfig(cells=(2, 2)))
    torch.manual_seed(0)
    image, target = fields[0]
    validate_target(image, target)
    assert image.shape[1:] != plain[0][0].shape[1:] and target["image_id"] == 0
    assert 1 <= len(target["masks"]) <= 2 and "nuclei" in target and target["nuclei"].any()
    torch.manual_seed(0)
    again, _ = fields[0]
    assert torch.equal(image, again)  # seeded by torch's generator, as the training loop seeds it
    assert torch.equal(CellDataset(src, classes=("white_cell",), fields=0.0)[0][0], plain[0][0])
    with pytest.raises(ValueError, match="share"):
        CellDataset(src, fields=1.5)


def test_training_with_fields_skips_data_that_annotates_red_cells(white_crops, tmp_path):
    from hemaseg.data.synthetic import write_dataset
    from hemaseg.data.transforms import AugmentConfig

    smears = write_dataset(tmp_path / "smears", 4, SynthConfig(height=64, width=64), seed=1)
    lines = []
    cfg = TrainConfig(data=(str(white_crops), str(smears)), out=str(tmp_path / "run"), epochs=1, batch_size=2,
                      warmup_steps=2, augment=AugmentConfig(fields=0.5))
    result = train(cfg, progress=False, log=lines.append)
    note = next(line for line in lines if line.startswith("whole fields"))
    assert "50%" in note and str(smears) in note and str(white_crops) not in note
    assert np.isfinite(result.history[0]["loss"])
    saved = TrainConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())["train"])
    assert saved.augment.fields == 0.5


def test_fields_keep_the_configured_rim_of_the_cells_own_crop(tmp_path):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    image = (rng.uniform(0, 1, (64, 64, 3)) * 255).astype(np.uint8)  # a crop of pure noise: its own pixels show
    labels = np.zeros((64, 64), np.int32)
    labels[20:44, 20:44] = 1
    write_sample(tmp_path / "crops", "crop", image, labels, ["white_cell"])
    src = open_dataset(tmp_path / "crops")

    def roughness_at(rim: int, d: float) -> float:
        """Mean |pixel - its 3x3 median| on the ring ``d`` px outside the pasted cell."""
        ds = CellDataset(src, classes=("white_cell",), fields=1.0, field_config=FieldConfig(cells=(1, 1), overhang=0.0, rim=rim))
        torch.manual_seed(1)
        field, target = ds[0]
        dist = ndi.distance_transform_edt(~target["masks"][0].numpy().astype(bool))
        ring = (dist > d - 0.5) & (dist <= d + 0.5)
        f = field.numpy()
        return float(np.mean([np.abs(c - ndi.median_filter(c, 3))[ring].mean() for c in f]))

    painted = roughness_at(3, 10)  # beyond any rim: the painted field's own texture (~0.03)
    assert roughness_at(3, 4) < 1.3 * painted  # 4 px out, a 3 px rim has faded out ...
    assert roughness_at(8, 4) > 2.5 * painted  # ... an 8 px one is halfway: half the crop's noise (~0.11)
    assert roughness_at(8, 10) < 1.3 * painted
    with pytest.raises(ValueError, match="rim must be >= 1"):
        FieldConfig(rim=0)
    from hemaseg.data.transforms import AugmentConfig

    with pytest.raises(ValueError, match="field_rim must be >= 1"):
        AugmentConfig(field_rim=0)
