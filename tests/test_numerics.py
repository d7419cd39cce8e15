"""Issue 7, point 3: a NaN/inf loss stops training with a clear message and keeps the last good
checkpoint; a diverging learning rate is reported, not silently continued."""

import pytest
import torch
from typer.testing import CliRunner

import hemaseg.train as train_module
from hemaseg.cli import app
from hemaseg.data.synthetic import SynthConfig, write_dataset
from hemaseg.engine import DivergedError
from hemaseg.model import read_checkpoint
from hemaseg.train import TrainConfig, train


@pytest.fixture(scope="module")
def smears(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("smears"), 6, SynthConfig(height=96, width=96), seed=4)


def _cfg(data, out, **kw):
    return TrainConfig(**{**dict(data=str(data), out=str(out), epochs=3, batch_size=2, warmup_steps=3, seed=2), **kw})


def _in_epoch(n, action):
    """Wrap the real epoch loop: run ``action(model, real_losses)`` in epoch ``n``."""
    real, calls = train_module.train_one_epoch, []

    def wrapped(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            return action(model, lambda: real(model, *args, **kwargs))
        return real(model, *args, **kwargs)
    return wrapped


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(smears, tmp_path, monkeypatch):
    def poison(model, run):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))  # the real loop then meets a NaN loss
        return run()

    monkeypatch.setattr(train_module, "train_one_epoch", _in_epoch(2, poison))
    out = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"training stopped in epoch 2: loss is nan .*lower the learning rate.*"
                                            r"last\.pt keeps epoch 1"):
        train(_cfg(smears, out), progress=False, log=lambda s: None)
    last = read_checkpoint(out / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert read_checkpoint(out / "best.pt")["epoch"] == 1


def test_a_loss_that_climbs_is_reported_as_divergence(smears, tmp_path, monkeypatch):
    def climb(model, run):
        losses = run()
        return {**losses, "loss": losses["loss"] * 50}

    monkeypatch.setattr(train_module, "train_one_epoch", _in_epoch(2, climb))
    with pytest.raises(DivergedError, match=r"training diverged in epoch 2: mean loss .* is over 3x the lowest so far"
                                            r".*--lr 0\.001.*keeps epoch 1"):
        train(_cfg(smears, tmp_path / "run"), progress=False, log=lambda s: None)
    assert read_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_a_huge_learning_rate_ends_with_a_message_not_a_traceback(smears, tmp_path):
    r = CliRunner().invoke(app, ["train", "--data", str(smears), "--out", str(tmp_path / "run"), "--epochs", "3",
                                 "--batch-size", "2", "--warmup", "1", "--lr", "1e4", "--no-progress"])
    assert r.exit_code == 2, r.output
    assert "error: training" in r.output and "lower the learning rate" in r.output
    assert "Traceback" not in r.output
