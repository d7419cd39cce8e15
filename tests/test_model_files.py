"""Issue 7, point 4: loading a model file never runs code (``weights_only`` loading), a file of another
architecture or class count gives a clear error, and a tampered file is refused (weights digest; the
bundled model's SHA-256)."""

import hashlib

import pytest
import torch

import hemaseg.model as model_module
from hemaseg.model import (
    CheckpointError, ModelConfig, build_model, default_model, load_model, load_weights, read_checkpoint, save_checkpoint,
    weights_digest,
)


def test_bad_model_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such model file"):
        load_model(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=r"junk.pt: not a readable checkpoint \(not a PyTorch file\)$"):
        load_model(junk)
    torch.save({"format": "hemaseg-checkpoint"}, tmp_path / "whole.pt")
    (tmp_path / "half.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"half.pt: not a readable checkpoint \(a damaged PyTorch file: truncated or altered\)$"):
        load_model(tmp_path / "half.pt")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a hemaseg checkpoint"):
        load_model(tmp_path / "other.pt")


class _Evil:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):  # unpickling it would create the file ``target``
        return (open, (self.target, "w"))


def test_loading_never_executes_code(tmp_path):
    path = tmp_path / "evil.pt"
    pwned = tmp_path / "pwned"
    torch.save({"format": "hemaseg-checkpoint", "version": 1, "payload": _Evil(pwned)}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError, match=r"evil.pt: .*refused, as loading it could run code"):
        read_checkpoint(path)
    assert not pwned.exists()


def test_weights_of_another_architecture_are_refused(tmp_path):
    cfg = ModelConfig()
    model = build_model(cfg)
    other = build_model(ModelConfig(classes=("a", "b"))).state_dict()
    with pytest.raises(CheckpointError, match="src.pt: weights do not fit.*shape mismatches"):
        load_weights(model, other, source="src.pt")
    skipped = load_weights(model, other, source="src.pt", allow_head_mismatch=True)
    assert skipped and all("predictor" in k for k in skipped)


def test_a_fresh_outline_head_is_started_anew_and_the_rest_loaded():
    torch.manual_seed(0)
    plain = build_model(ModelConfig()).state_dict()
    four = build_model(ModelConfig(outline=4)).state_dict()
    deeper = build_model(ModelConfig(outline=4, outline_levels=5))
    own_head = {k: v.clone() for k, v in deeper.state_dict().items() if k.startswith("outline.")}
    for source in (plain, four):  # no head, or a head of another depth: the whole head is the model's own
        new = load_weights(deeper, source, source="stage1.pt", fresh="outline.")
        assert sorted(new) == sorted(own_head)
        state = deeper.state_dict()
        assert all(torch.equal(state[k], v) for k, v in own_head.items())
        assert all(torch.equal(state[k], v) for k, v in source.items() if not k.startswith("outline."))
    with pytest.raises(CheckpointError, match="stage1.pt.*missing"):  # only with fresh= may a head be absent
        load_weights(deeper, plain, source="stage1.pt")
    same = build_model(ModelConfig(outline=4))
    assert load_weights(same, four, source="stage1.pt", fresh="outline.") == []  # same head: loaded as it is
    assert all(torch.equal(same.state_dict()[k], v) for k, v in four.items())
    with pytest.raises(ValueError, match="outline_levels must be in 2..6"):
        ModelConfig(outline=4, outline_levels=1)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(classes=("cell",))
    return save_checkpoint(tmp_path / "m.pt", build_model(cfg), cfg, epoch=4)


def test_every_checkpoint_carries_a_digest_of_its_config_and_weights(saved):
    ckpt = torch.load(saved, weights_only=True)
    assert ckpt["digest"] == weights_digest(ckpt) and len(ckpt["digest"]) == 64
    assert read_checkpoint(saved)["epoch"] == 4


@pytest.mark.parametrize("edit", ["weight", "config", "new tensor"])
def test_altered_weights_or_config_are_refused(saved, tmp_path, edit):
    ckpt = torch.load(saved, weights_only=True)
    if edit == "weight":
        name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
        ckpt["model"][name] = ckpt["model"][name].clone()
        ckpt["model"][name].view(-1)[0] += 1.0
    elif edit == "config":
        ckpt["config"]["classes"] = ["cell", "virus"]
    else:
        ckpt["model"]["extra.weight"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "tampered.pt")  # the old digest kept
    with pytest.raises(CheckpointError, match=r"tampered\.pt: the weights or config do not match the digest"):
        load_model(tmp_path / "tampered.pt")


def test_flipped_bytes_on_disk_are_refused(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + 4000, 97):  # somewhere inside the weights
        data[offset] ^= 0xFF
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"flipped\.pt: (the weights or config do not match|not a readable)"):
        load_model(bad)


def test_a_config_that_does_not_fit_its_weights_is_a_clear_error(saved, tmp_path):
    ckpt = torch.load(saved, weights_only=True)
    ckpt["config"]["classes"] = ["cell", "virus"]  # another class count, re-signed as a hand-made file would be
    ckpt["digest"] = weights_digest(ckpt)
    torch.save(ckpt, tmp_path / "two.pt")
    with pytest.raises(CheckpointError, match=r"two\.pt: weights do not fit.*shape mismatches"):
        load_model(tmp_path / "two.pt")


def test_the_bundled_model_is_checked_before_use(tmp_path, monkeypatch):
    assert hashlib.sha256(default_model().read_bytes()).hexdigest() == model_module.BUNDLED_SHA256
    copy = tmp_path / "default.pt"
    data = bytearray(default_model().read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(model_module, "BUNDLED_MODEL", copy)
    with pytest.raises(CheckpointError, match=r"default\.pt: SHA-256 .* is not the bundled model's .*altered or corrupted"):
        default_model()
