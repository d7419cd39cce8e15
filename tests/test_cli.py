import json

import numpy as np
from typer.testing import CliRunner

from hemaseg.cli import app

from conftest import save_png

runner = CliRunner()


def test_synth_then_train_from_the_command_line(tmp_path):
    r = runner.invoke(app, ["synth", "--out", str(tmp_path / "d"), "-n", "4", "--size", "64"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 4
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--epochs", "1",
                            "--batch-size", "2", "--val-fraction", "0.25", "--no-progress", "--scale", "1.5"])
    assert r.exit_code == 0, r.output
    assert "best epoch 1" in r.output and str(tmp_path / "run" / "best.pt") in r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["scale"] == 1.5 and config["model"]["arch"] == "resnet18_fpn"
    assert config["train"]["epochs"] == 1
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train"]) == 3 and len(split["val"]) == 1


def test_bad_data_is_a_clear_error_not_a_traceback(tmp_path):
    save_png(tmp_path / "a.bmp", np.zeros((8, 8, 3), np.uint8))
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert "a.bmp: image has no mask" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--arch", "vgg"])
    assert r.exit_code == 2 and "unknown architecture 'vgg'" in r.output


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("hemaseg ")
