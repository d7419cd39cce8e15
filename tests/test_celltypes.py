"""The cell-image type classifier (hemaseg.celltypes): crops at one scale, stain matching, group labels,
a short training whose loss falls, calibration, the unidentified bin, safe files, segment and report."""

import csv
import json

import numpy as np
import pytest
import torch

from hemaseg.celltypes import (
    UNIDENTIFIED, CellTypeClassifier, CropSet, TypeConfig, TypeNet, TypeTrainConfig, allowed_matrix, allowed_types,
    augment, context_crop, context_crops, fit_celltypes, fit_temperature, lab_stats, labelled_crops, reinhard, rgb_to_lab,
    lab_to_rgb, set_loss, split_crops,
)
from hemaseg.model import CheckpointError

SMALL = TypeConfig(types=("lymphocyte", "eosinophil", "segmented_neutrophil", "band_neutrophil"), context=40, size=32,
                   pixel_size=0.5)


def _disk_image(radius_px: float, size: int = 200, colour=(90, 40, 140)) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    im = np.full((size, size, 3), 225, np.uint8)
    im[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius_px ** 2] = colour
    return im


def test_context_crop_brings_every_image_to_one_scale():
    cfg = TypeConfig(pixel_size=0.25, context=64, size=48)
    # a 10 um cell imaged at 0.1 and at 0.2 um/px: 100 px and 50 px across, 40 px across in both crops
    for px in (0.1, 0.2):
        crop = context_crop(_disk_image(5 / px), (100, 100), px, cfg)
        inside = (crop[..., 2] < 180).sum()
        assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
        assert inside == pytest.approx(np.pi * 20 ** 2, rel=0.06)


def test_context_crop_mirrors_beyond_the_edge_and_refuses_bad_input():
    im = np.zeros((20, 20, 3), np.uint8)
    im[:, :10] = 255  # left half white
    crop = context_crop(im, (10, 1), 1.0, TypeConfig(pixel_size=1.0, context=16, size=16))
    assert crop[8, 0, 0] == 255 and crop[8, 15, 0] == 255  # left of the edge mirrored: white again
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        context_crop(im[..., 0], (10, 10), 1.0)
    with pytest.raises(ValueError, match="pixel size"):
        context_crop(im, (10, 10), 0.0)


def test_context_crops_of_a_whole_field_match_the_crops_cut_one_by_one():
    cfg = TypeConfig(pixel_size=0.25, context=64, size=48)
    rng = np.random.default_rng(0)
    for px in (0.1, 0.2, 0.3):  # shrunk, nearly as is, enlarged
        im = _disk_image(5 / px, size=240)
        im = np.clip(im.astype(int) + rng.integers(-10, 10, im.shape), 0, 255).astype(np.uint8)
        centres = [(120.0, 120.0), (119.4, 121.7), (3.0, 230.0), (237.0, 2.0)]  # the last two reach past the edge
        many = context_crops(im, centres, px, cfg)
        one = np.stack([context_crop(im, c, px, cfg) for c in centres])
        assert many.shape == one.shape == (4, 64, 64, 3) and many.dtype == np.uint8
        dark_many, dark_one = (many[..., 2] < 180).sum((1, 2)), (one[..., 2] < 180).sum((1, 2))
        assert np.abs(dark_many[:2] - dark_one[:2]).max() <= 0.03 * dark_one[0], (px, dark_many, dark_one)  # the cell: same size
        assert np.abs(many.astype(int) - one).mean() < 6, px  # same windows, to within a fraction of a pixel
    assert context_crops(im, [], px, cfg).shape == (0, 64, 64, 3)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        context_crops(im[..., 0], centres, 0.2, cfg)


def test_lab_conversion_agrees_with_scikit_image_and_inverts():
    from skimage.color import rgb2lab

    rgb = np.random.default_rng(0).random((6, 7, 3))
    ours = rgb_to_lab(torch.tensor(rgb, dtype=torch.float64).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - rgb2lab(rgb)).max() < 0.05
    back = lab_to_rgb(torch.tensor(ours).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(back - rgb).max() < 1e-4


def test_reinhard_makes_two_stains_of_one_cell_alike():
    pale = _disk_image(30, 96, (170, 120, 200)).astype(np.float32) / 255
    dark = _disk_image(30, 96, (80, 20, 110)).astype(np.float32) / 255
    dark[..., 0] = dark[..., 0] * 0.8  # another lab: darker, bluer background too
    x = torch.tensor(np.stack([pale, dark])).permute(0, 3, 1, 2)
    ref = lab_stats(x[:1])[0].tolist()
    before = (x[0] - x[1]).abs().mean()
    after = reinhard(x, ref)
    assert (after[0] - after[1]).abs().mean() < 0.25 * before
    assert (lab_stats(after[1:]) - torch.tensor(ref)).abs().max() < 1.0


def test_group_labels_train_towards_any_of_their_types():
    assert allowed_types("neutrophil") == ("segmented_neutrophil", "band_neutrophil")
    with pytest.raises(ValueError, match="'blast' is not one of the types"):
        allowed_types("blast")
    allowed = allowed_matrix(["neutrophil", "lymphocyte"], SMALL.types)
    assert allowed.tolist() == [[False, False, True, True], [True, False, False, False]]
    split_evenly = torch.tensor([[0.0, 0.0, 3.0, 3.0]])  # sure it is a neutrophil, unsure which kind
    assert float(set_loss(split_evenly, allowed[:1])) < 0.1  # ... which is all a "neutrophil" label asks
    assert float(set_loss(split_evenly, allowed[1:])) > 3.0


def _synthetic(n: int, seed: int) -> CropSet:
    """Lymphocytes (small dark round nucleus filling the cell) and eosinophils (large pale cell with orange
    granules and a two-lobed nucleus) at one scale, a random stain each."""
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    yy, xx = np.mgrid[:40, :40]
    for i in range(n):
        kind = ("lymphocyte", "eosinophil")[i % 2]
        im = np.full((40, 40, 3), 225.0)
        cy, cx = 20 + rng.uniform(-2, 2, 2)
        r = 7 if kind == "lymphocyte" else 12
        cell = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        im[cell] = (200, 160, 150) if kind == "eosinophil" else (190, 170, 210)
        if kind == "eosinophil":
            im[cell & (rng.random((40, 40)) < 0.4)] = (230, 120, 60)
            for dx in (-4, 4):
                im[(yy - cy) ** 2 + (xx - cx - dx) ** 2 < 9] = (90, 40, 140)
        else:
            im[(yy - cy) ** 2 + (xx - cx) ** 2 < 6 ** 2] = (70, 30, 130)
        im = im * rng.uniform(0.85, 1.1, 3) + rng.normal(0, 4, im.shape)
        crops.append(np.clip(im, 0, 255).astype(np.uint8))
        labels.append(kind)
    return CropSet(np.stack(crops), labels, ["synthetic"] * n, [f"{i}.png#1" for i in range(n)])


def test_a_short_training_learns_two_types_and_calibrates(tmp_path):
    torch.manual_seed(0)
    data = _synthetic(120, 0)
    cfg = TypeConfig(types=SMALL.types, context=40, size=32, pixel_size=0.5)
    clf = fit_celltypes(data, cfg, TypeTrainConfig(epochs=6, batch=16, lr=2e-3, calibration=0.2), log=lambda s: None,
                        progress=False)
    losses = clf.report["losses"]
    assert losses[-1] < 0.5 * losses[0], losses  # the loss falls
    test = _synthetic(40, 1)
    probs = clf.probabilities(test.crops)
    predicted = [clf.classes[i] for i in probs.argmax(1)]
    assert np.mean([p == t for p, t in zip(predicted, test.labels)]) >= 0.9
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert 0.25 <= clf.cfg.temperature <= 8 and 0 <= clf.cfg.threshold <= 1
    assert clf.report["calibration"]["synthetic"]["cells"] == 24  # 20% of the images kept for calibration
    assert clf.cfg.reference != TypeConfig().reference  # the stain reference is the training cells'

    path = clf.save(tmp_path / "types.pt")
    again = CellTypeClassifier.load(path)
    assert again.cfg == clf.cfg and path.stat().st_size < 12e6  # 8-bit weights: a quarter of float32's 45 MB
    assert np.abs(again.probabilities(test.crops) - probs).max() < 0.05


def test_temperature_scaling_recovers_the_true_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 5, generator=g) * 4
    truth = torch.multinomial(torch.softmax(logits / 2.0, 1), 1, generator=g)[:, 0]  # outcomes drawn at T = 2
    allowed = torch.zeros(4000, 5, dtype=torch.bool)
    allowed[torch.arange(4000), truth] = True
    assert fit_temperature(logits, allowed) == pytest.approx(2.0, rel=0.1)


def test_unidentified_under_the_threshold_keeps_the_top_two():
    net = TypeNet(TypeConfig(types=SMALL.types, context=40, size=32, threshold=0.6))
    clf = CellTypeClassifier(net)
    calls = clf.calls(np.array([[0.7, 0.2, 0.05, 0.05], [0.4, 0.35, 0.15, 0.1]]))
    assert (calls[0].type, calls[0].top, calls[0].second) == ("lymphocyte", "lymphocyte", "eosinophil")
    assert (calls[1].type, calls[1].top, calls[1].confidence) == (UNIDENTIFIED, "lymphocyte", 0.4)
    assert (calls[1].second, calls[1].second_confidence) == ("eosinophil", 0.35)


def test_classifier_files_are_loaded_safely(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("open('" + str(tmp_path / "pwned") + "', 'w').write('x')",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "hemaseg-celltypes", "x": Boom()}))
    with pytest.raises(CheckpointError, match="evil.pt: not a readable cell-type classifier"):
        CellTypeClassifier.load(evil)
    assert not (tmp_path / "pwned").exists()
    other = tmp_path / "other.pt"
    torch.save({"format": "hemaseg-scale"}, other)
    with pytest.raises(CheckpointError, match="other.pt: not a hemaseg cell-type classifier"):
        CellTypeClassifier.load(other)
    with pytest.raises(CheckpointError, match="missing.pt: no such"):
        CellTypeClassifier.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"format": "hemaseg-celltypes", "version": 1, "config": {"types": ["lymphocyte"]}, "model": {}}, bad)
    with pytest.raises(CheckpointError, match="bad.pt: bad cell-type classifier"):
        CellTypeClassifier.load(bad)


def test_labelled_crops_use_masks_beside_images_and_skip_unknown_or_mixed_types(tmp_path):
    from conftest import save_png

    im = _disk_image(10, 60)
    mask = np.zeros((60, 60), np.uint8)
    mask[10:20, 40:50] = 255  # the cell is off-centre: its mask says where
    save_png(tmp_path / "a.bmp", im), save_png(tmp_path / "a.png", mask)
    save_png(tmp_path / "b.jpg", im), save_png(tmp_path / "c.jpg", im), save_png(tmp_path / "d.jpg", im)
    labels = {"a": "lymphocyte", "b": "neutrophil", "c": "lymphocyte|monocyte"}  # d: no label
    s = labelled_crops(sorted(tmp_path.glob("[abcd].[bj]*")), labels, 0.5, "t", SMALL)
    assert s.labels == ["lymphocyte", "neutrophil"] and s.names == ["a.bmp#1", "b.jpg#1"]
    assert s.crops[0][20, 20].tolist() == [225, 225, 225]  # centred on the masked square, outside the disk
    assert np.abs(s.crops[1][20, 20].astype(int) - (90, 40, 140)).max() <= 4  # no mask: the crop's centre (JPEG)
    train, held = split_crops(CropSet.join([s] * 1), 0.5, 0)
    assert len(train) + len(held) == 2 and len(held) == 1


def test_augment_gives_views_of_the_network_size():
    data = _synthetic(4, 0)
    views = augment(torch.as_tensor(data.crops), SMALL, torch.Generator().manual_seed(0))
    assert views.shape == (4, 3, 32, 32) and 0 <= float(views.min()) and float(views.max()) <= 1
    assert not torch.allclose(views, augment(torch.as_tensor(data.crops), SMALL, torch.Generator().manual_seed(1)))


def test_segment_types_cells_with_the_top_two_and_the_lab_differential(tmp_path):
    from conftest import save_png
    from test_segment import OneWhiteCell

    from hemaseg.report import write_differential
    from hemaseg.segment import segment_files

    torch.manual_seed(0)
    clf = CellTypeClassifier(TypeNet(TypeConfig(types=SMALL.types, context=40, size=32, threshold=0.0)))
    files = [save_png(tmp_path / "in" / f"{k}.png", _disk_image(10, 40)) for k in "ab"]
    segment_files(files, OneWhiteCell(), tmp_path / "out", progress=False, log=lambda s: None, classifier=clf)
    row = next(csv.DictReader(open(tmp_path / "out" / "a_cells.csv")))
    assert row["type"] in SMALL.types and row["top_type"] == row["type"]
    assert row["second_type"] in SMALL.types and row["second_type"] != row["type"]
    assert float(row["type_confidence"]) >= float(row["second_confidence"])
    d = write_differential(tmp_path / "out")
    assert d["lab"]["white_cells"] == 2 and sum(d["lab"]["five_part"].values()) == 2
    saved = json.loads((tmp_path / "out" / "differential.json").read_text())
    assert saved["lab"]["immature_granulocyte_percent"] == 0.0 and saved["research_use_only"] is True
    assert "% of white cells" in (tmp_path / "out" / "differential.html").read_text()


def test_fit_classifier_command_trains_a_loadable_cnn(tmp_path):
    from typer.testing import CliRunner

    from conftest import save_png
    from hemaseg.cli import app

    data = _synthetic(40, 2)
    folder = tmp_path / "crops"
    for k, crop in enumerate(data.crops):
        save_png(folder / f"{k:03d}.jpg", crop)
    (tmp_path / "types.csv").write_text("image,type\n" + "".join(f"{k:03d},{t}\n" for k, t in enumerate(data.labels)))
    out = tmp_path / "types.pt"
    args = ["fit-classifier", "--data", str(folder), "--labels", str(tmp_path / "types.csv"), "--pixel-size", "0.25",
            "--epochs", "1", "--out", str(out), "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "32 training cells, 8 held out" in r.output and "held out" in r.output and "research use only" in r.output
    clf = CellTypeClassifier.load(out)
    assert set(clf.report["held_out"][str(folder)]["per_type"]) == {"lymphocyte", "eosinophil"}
    r = CliRunner().invoke(app, args[:5] + ["--pixel-size", "0.25", "--pixel-size", "0.3", "--out", str(out)])
    assert r.exit_code == 2 and "2 --pixel-size for 1 --data" in r.output
    assert clf.cfg.arch == "efficientnet_lite0"  # the default: EfficientNet-Lite0 from ImageNet weights
    r = CliRunner().invoke(app, args + ["--arch", "resnet18"])
    assert r.exit_code == 2 and "no offline ImageNet weights for resnet18; use --init random" in r.output
    r = CliRunner().invoke(app, args + ["--init", "imagenet21k"])
    assert r.exit_code == 2 and "'imagenet21k' is not one of 'imagenet', 'random'" in " ".join(r.output.replace("│", " ").split())


def test_the_differential_is_of_the_last_batch_and_refuses_missing_tables(tmp_path):
    from conftest import save_png
    from test_segment import OneWhiteCell

    from hemaseg.data.io import DataError
    from hemaseg.report import write_differential
    from hemaseg.segment import segment_files

    clf = CellTypeClassifier(TypeNet(TypeConfig(types=SMALL.types, context=40, size=32, threshold=0.0)))
    a, b = (save_png(tmp_path / "in" / f"{k}.png", _disk_image(10, 40)) for k in "ab")
    out = tmp_path / "out"
    quiet = {"progress": False, "log": lambda s: None, "classifier": clf}
    segment_files([a, b], OneWhiteCell(), out, **quiet)
    assert write_differential(out)["lab"]["white_cells"] == 2
    segment_files([b], OneWhiteCell(), out, **quiet)  # a's tables stay in the folder, but not in this batch
    d = write_differential(out)
    assert d["lab"]["white_cells"] == 1 and [r["name"] for r in d["images"]] == ["b"]
    before = (out / "differential.json").read_bytes()
    (out / "b_cells.csv").unlink()
    with pytest.raises(DataError, match=r"b_cells\.csv: cannot read \(no such file or directory\); segment .*b\.png again"):
        write_differential(out)
    (out / "b_cells.csv").write_text("id,type\n1,lymphocyte,extra,fields\n")
    with pytest.raises(DataError, match=r"b_cells\.csv: not a complete hemaseg table \(no column class, bbox_x1"):
        write_differential(out)
    assert (out / "differential.json").read_bytes() == before  # nothing overwritten
