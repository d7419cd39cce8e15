import csv

import numpy as np
import pytest
import torch

from hemaseg.data.synthetic import SynthConfig, write_dataset
from hemaseg.model import load_model, read_checkpoint
from hemaseg.train import RunExistsError, TrainConfig, lr_lambda, train

from conftest import save_png, tiny_config


_cfg = tiny_config  # the shared tiny run's settings, changed where a test says


def test_short_training_run_loss_falls_and_writes_the_run(smears, tmp_path):
    result = train(_cfg(smears, tmp_path / "run", epochs=5, lr=1e-3), progress=False, log=lambda s: None)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 5
    assert losses[-1] < 0.75 * losses[0], losses
    for name in ("config.json", "split.json", "metrics.csv", "best.pt", "last.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert float(rows[-1]["val_mean_iou"]) == pytest.approx(result.history[-1]["val_mean_iou"], abs=1e-6)  # the CSV is the run's
    assert np.isfinite(result.history[-1]["val_mean_iou"]) and "val_f1_50" in rows[-1]  # cells to score: a number, not n/a
    model, cfg = load_model(tmp_path / "run" / "best.pt")
    assert set(cfg.classes) == {"red_cell", "white_cell", "platelet", "nucleus"} and cfg.classes[-1] == "nucleus"
    assert read_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == result.best_epoch


class Interrupted(Exception):
    pass


def _stop_after_epoch_1(line):
    if line.startswith("epoch 1/"):  # logged after epoch 1's checkpoints are written
        raise Interrupted


def test_resume_continues_exactly_where_it_stopped(tiny_run, smears, tmp_path):
    quiet = dict(progress=False, log=lambda s: None)
    straight = tiny_run.result  # the same settings, run straight through
    with pytest.raises(Interrupted):
        train(_cfg(smears, tmp_path / "b"), progress=False, log=_stop_after_epoch_1)
    resumed = train(_cfg(smears, tmp_path / "b", epochs=2), resume=True, **quiet)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[1]["loss"] == pytest.approx(straight.history[1]["loss"], rel=1e-4)
    wa = read_checkpoint(tiny_run.out / "last.pt")["model"]
    wb = read_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5) for k in wa)
    rows = list(csv.DictReader(open(tmp_path / "b" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_existing_run_is_not_overwritten(tiny_run, smears, tmp_path):
    before = {p.name: p.read_bytes() for p in tiny_run.out.iterdir()}
    with pytest.raises(RunExistsError, match="--resume"):
        train(tiny_run.cfg, progress=False, log=lambda s: None)
    assert {p.name: p.read_bytes() for p in tiny_run.out.iterdir()} == before
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_cfg(smears, tmp_path / "new", epochs=1), resume=True, progress=False, log=lambda s: None)


def test_images_without_cells_train(tmp_path):
    for i in range(4):
        save_png(tmp_path / "d" / f"{i}.bmp", np.random.default_rng(i).integers(0, 255, (48, 48, 3), dtype=np.uint8))
        mask = np.zeros((48, 48), np.uint8)
        if i % 2:
            mask[10:30, 10:30] = 128
        save_png(tmp_path / "d" / f"{i}.png", mask)
    result = train(_cfg(tmp_path / "d", tmp_path / "run", epochs=1, val_fraction=0), progress=False, log=lambda s: None)
    assert np.isfinite(result.history[0]["loss"])
    assert "val_mean_iou" not in result.history[0]  # no validation data: best = lowest loss


def test_lr_schedules():
    assert lr_lambda("constant", 0, 10)(5) == 1.0
    step = lr_lambda("step", 0, 10)
    assert step(6) == 1.0 and step(7) == 0.1
    cos = lr_lambda("cosine", 0, 100)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.505) and cos(100) == pytest.approx(0.01)


@pytest.mark.slow
def test_default_training_on_zheng_dataset1_reaches_090(zheng, tmp_path):
    """The acceptance figure of docs/benchmarks.md (about 20 min on 2 cores): default settings."""
    result = train(TrainConfig(data=str(zheng / "dataset1"), out=str(tmp_path / "run")), progress=False)
    assert result.best_metrics["val_mean_iou"] >= 0.90


def test_training_on_two_folders_learns_nuclei_and_splits_each(tmp_path):
    import json

    from conftest import semantic_pair

    from hemaseg.data.dataset import select_refs
    from hemaseg.data.formats import open_dataset

    for i in range(5):
        semantic_pair(tmp_path / "data" / "d1", f"{i:03d}", h=40, w=40, cells=((5, 5, 25, 25),))
        semantic_pair(tmp_path / "data" / "d2", f"{i:03d}", h=48, w=48, cells=((10, 10, 30, 34),))
    data = (str(tmp_path / "data" / "d1"), str(tmp_path / "data" / "d2"))
    quiet = dict(progress=False, log=lambda s: None)
    result = train(_cfg(data, tmp_path / "run", epochs=1), **quiet)
    _, cfg = load_model(tmp_path / "run" / "best.pt")
    assert cfg.classes == ("cell", "nucleus")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["sources"] == ["d1", "d2"] and len(split["train"]) == 8 and len(split["val"]) == 2
    for d in data:
        src = open_dataset(d)
        assert len(select_refs(src.refs, src.root, tmp_path / "run" / "split.json", "val")) == 1
    assert "val_mean_iou" in result.history[0]
    saved = TrainConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())["train"])
    assert saved.data == data and saved.nuclei == "auto"

    train(_cfg(data[0], tmp_path / "cells-only", epochs=1, nuclei="off"), **quiet)
    assert load_model(tmp_path / "cells-only" / "best.pt")[1].classes == ("cell",)
    old = saved.to_dict()
    del old["nuclei"]  # a run written before nuclei were learned resumes as it was trained
    assert TrainConfig.from_dict(old).nuclei == "off"
    with pytest.raises(ValueError, match="nuclei must be"):
        _cfg(data, tmp_path / "x", nuclei="split")


def test_training_at_a_diameter_resizes_each_dataset_and_the_model_keeps_it(smears, tmp_path):
    lines = []
    train(_cfg(smears, tmp_path / "run", epochs=1, diameter=30.0), progress=False, log=lines.append)
    note = next(line for line in lines if "median cell diameter" in line)
    measured = float(note.split("median cell diameter ")[1].split(" px")[0])
    assert 15 < measured < 25  # the synthetic smears: mostly red cells of radius 8-11
    factor = float(note.split("resized x")[1].split(" ")[0])
    assert factor == pytest.approx(30 / measured, rel=0.01)
    _, cfg = load_model(tmp_path / "run" / "best.pt")
    assert cfg.diameter == 30.0
    assert read_checkpoint(tmp_path / "run" / "best.pt")["data_diameters"] == {str(smears): pytest.approx(measured, abs=0.05)}
    with pytest.raises(ValueError, match="diameter must be 4-4000 px"):
        _cfg(smears, tmp_path / "bad", diameter=-1.0)


def test_training_at_a_pixel_size_brings_each_dataset_to_it_and_the_model_keeps_it(smears, tmp_path):
    from hemaseg.data.dataset import cell_diameter
    from hemaseg.train import dataset_scales, prepare_data

    half = write_dataset(tmp_path / "half", 6, SynthConfig(height=56, width=56, red_radius=(4.0, 5.5),
                                                           white_radius=(7.5, 10.5), platelet_radius=(1.0, 1.6)), seed=2)
    cfg = _cfg((str(smears), str(half)), tmp_path / "run", epochs=1, pixel_size=0.2, data_pixel_size=(0.1, 0.2))
    train_parts, val_parts = prepare_data(cfg)
    classes = tuple(sorted({c for s, _ in train_parts for c in s.classes}))
    resize, diameters, model_diameter = dataset_scales(cfg, train_parts, val_parts, classes, lambda s: None)
    assert [resize[id(s)] for s, _ in train_parts] == [0.5, 1.0]  # 0.1 um/px shrunk to 0.2; 0.2 kept
    native = [cell_diameter(s, r, classes) for s, r in train_parts]
    assert model_diameter == pytest.approx(float(np.median([native[0] * 0.5, native[1]])), abs=0.01)
    result = train(cfg, progress=False, log=lambda s: None)
    _, mcfg = load_model(result.out / "best.pt")
    assert mcfg.pixel_size == 0.2 and mcfg.diameter == pytest.approx(model_diameter)
    # without --data-pixel-size each dataset's pixel size is read off its images by the bundled scale model
    lines = []
    resize, _, _ = dataset_scales(_cfg(smears, tmp_path / "est", pixel_size=0.2), *prepare_data(_cfg(smears, tmp_path / "est")),
                                  classes, lines.append)
    estimated = float(lines[0].split(" um/px (estimated)")[0].split(": ")[-1])
    assert estimated == pytest.approx(7.5 / 19.0, rel=0.15)  # painted red cells of radius 8-11 px: 7.5 um over ~19 px
    with pytest.raises(ValueError, match="not both"):
        _cfg(smears, tmp_path / "bad", pixel_size=0.2, diameter=30.0)
    with pytest.raises(ValueError, match="one value > 0 um/px per dataset"):
        _cfg((str(smears), str(half)), tmp_path / "bad", pixel_size=0.2, data_pixel_size=(0.1,))


def test_repeat_factors_set_each_datasets_share_of_an_epoch_and_an_outline_head_trains(tmp_path, monkeypatch):
    import json

    import hemaseg.train as train_module
    from conftest import semantic_pair

    from hemaseg.model import ModelConfig
    from hemaseg.outline import MaskRCNNWithOutline

    for i in range(5):
        semantic_pair(tmp_path / "data" / "d1", f"{i:03d}", h=40, w=40, cells=((5, 5, 25, 25),))
        semantic_pair(tmp_path / "data" / "d2", f"{i:03d}", h=48, w=48, cells=((10, 10, 30, 34),))
    data = (str(tmp_path / "data" / "d1"), str(tmp_path / "data" / "d2"))
    orders = []

    def spy(sizes, factors, generator):
        orders.append(train_module.repeat_indices.__wrapped__(sizes, factors, generator))
        return orders[-1]

    spy.__wrapped__ = train_module.repeat_indices
    monkeypatch.setattr(train_module, "repeat_indices", spy)
    cfg = _cfg(data, tmp_path / "run", epochs=2, repeat=(0.5, 2), model=ModelConfig(outline=4))
    result = train(cfg, progress=False, log=lambda s: None)
    epochs = orders
    assert len(epochs) == 2 and epochs[0] != epochs[1]
    for order in epochs:  # 4 training images each: d1 -> 2 of its 4 once, d2 -> all 4 twice
        assert len(order) == 10 and sum(i < 4 for i in order) == 2 and len({i for i in order if i < 4}) == 2
        assert sorted(i for i in order if i >= 4) == [4, 4, 5, 5, 6, 6, 7, 7]
    assert result.history[-1]["loss_outline"] > 0
    assert isinstance(load_model(tmp_path / "run" / "best.pt")[0], MaskRCNNWithOutline)
    saved = TrainConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())["train"])
    assert saved.repeat == (0.5, 2.0) and saved.model.outline == 4
    # a second stage trains the outline head alone: the Mask R-CNN's weights stay bit for bit
    first = read_checkpoint(tmp_path / "run" / "best.pt")["model"]
    train(_cfg(data, tmp_path / "stage2", epochs=1, model=ModelConfig(outline=4), outline_only=True,
               weights=str(tmp_path / "run" / "best.pt")), progress=False, log=lambda s: None)
    second = read_checkpoint(tmp_path / "stage2" / "last.pt")["model"]
    changed = {k for k in first if not torch.equal(first[k].float(), second[k].float())}
    assert changed and all(k.startswith("outline.") for k in changed)
    notes = []  # a head of another depth is trained anew from the same first stage
    train(_cfg(data, tmp_path / "stage2b", epochs=1, model=ModelConfig(outline=4, outline_levels=3), outline_only=True,
               weights=str(tmp_path / "run" / "best.pt")), progress=False, log=notes.append)
    assert any("a new outline head" in n for n in notes)
    assert load_model(tmp_path / "stage2b" / "best.pt")[1].outline_levels == 3
    with pytest.raises(ValueError, match="needs --outline and --weights"):
        _cfg(data, tmp_path / "x", outline_only=True, model=ModelConfig(outline=4))
    with pytest.raises(ValueError, match="one factor > 0 per dataset"):
        _cfg(data, tmp_path / "x", repeat=(1.0,))
    with pytest.raises(ValueError, match="one factor > 0 per dataset"):
        _cfg(data, tmp_path / "x", repeat=(1.0, 0.0))


def test_resume_with_other_data_is_refused_and_val_among_data_is_said(smears, tmp_path):
    import shutil

    logs: list[str] = []
    train(_cfg(smears, tmp_path / "run", epochs=1, val=str(smears)), progress=False, log=logs.append)
    assert any(f"warning: --val {smears} is also training --data: its scores are not held out" in s for s in logs)
    other = shutil.copytree(smears, tmp_path / "other")
    with pytest.raises(ValueError, match=r"last\.pt: the run was trained on --data .*smears.* --val .*, not .*other.*: resume "
                                         r"with the same data"):
        train(_cfg(other, tmp_path / "run", epochs=2), resume=True, progress=False, log=lambda s: None)


def test_validation_with_nothing_to_score_is_said_and_the_loss_decides(smears, tmp_path):
    import shutil

    val = tmp_path / "blank"
    shutil.copytree(smears, val)
    for image in (val / "images").glob("*.png"):
        save_png(image, np.full((112, 112, 3), 235, np.uint8))  # an empty slide: no cell to find
        save_png(val / "labels" / image.name, np.zeros((112, 112), np.uint16))
        (val / "nuclei" / image.name).unlink(missing_ok=True)
    lines = []
    result = train(_cfg(smears, tmp_path / "run", val=str(val), epochs=1), progress=False, log=lines.append)
    assert np.isnan(result.history[0]["val_mean_iou"]) and np.isnan(result.history[0]["val_f1_50"])  # not 1.0
    assert [line for line in lines if "warning" in line] == [
        "warning: epoch 1: no true and no found cell in the validation images: scores n/a, the best epoch is chosen by the loss"]
    assert result.best_epoch == 1 and (tmp_path / "run" / "best.pt").is_file()
