"""Issue 7, point 2: a killed `train` resumes from its last complete checkpoint with no corrupt file;
`segment` outputs are never half-written and a re-run skips or overwrites consistently."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from hemaseg.data.synthetic import SynthConfig, write_dataset
from hemaseg.model import read_checkpoint
from hemaseg.predict import Method, SegmentConfig
from hemaseg.segment import ResultsMismatch, segment_files

from conftest import save_png


@pytest.fixture(scope="module")
def smears(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("smears"), 6, SynthConfig(height=96, width=96), seed=3)


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "hemaseg", "train", "--data", str(data), "--out", str(out), "--epochs", "4",
            "--batch-size", "2", "--warmup", "3", "--no-progress", *extra]


def _epochs_done(out) -> int:
    metrics = out / "metrics.csv"
    return len(list(csv.DictReader(metrics.open()))) if metrics.is_file() else 0


def test_sigkill_mid_training_then_resume_finishes_the_run(smears, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(_train_cmd(smears, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while _epochs_done(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # well into epoch 2 (or writing its checkpoint)
    assert proc.poll() is None, proc.stdout.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = read_checkpoint(out / "last.pt")["epoch"]  # a complete, loadable checkpoint
    assert done >= 1 and _epochs_done(out) == done

    r = subprocess.run(_train_cmd(smears, out, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming {out} at epoch {done + 1}/4" in r.stdout
    assert read_checkpoint(out / "last.pt")["epoch"] == 4
    assert [int(row["epoch"]) for row in csv.DictReader((out / "metrics.csv").open())] == [1, 2, 3, 4]
    read_checkpoint(out / "best.pt")
    assert not list(out.glob(".*.tmp*"))  # a temp file of the killed write is cleared on resume


_CHILD = """
import os, signal, sys, torch
from hemaseg.model import ModelConfig, build_model, save_checkpoint
real = torch.save
def dies_half_way(obj, f, *a, **k):
    real(obj, f, *a, **k)
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)  # half the bytes on disk ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the process dies before the rename
torch.save = dies_half_way
cfg = ModelConfig()
save_checkpoint(sys.argv[1], build_model(cfg), cfg, epoch=2)
"""


def test_sigkill_mid_checkpoint_write_keeps_the_previous_file(tmp_path):
    from hemaseg.model import ModelConfig, build_model, save_checkpoint

    path = tmp_path / "last.pt"
    cfg = ModelConfig()
    save_checkpoint(path, build_model(cfg), cfg, epoch=1)
    before = path.read_bytes()
    r = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    assert path.read_bytes() == before and read_checkpoint(path)["epoch"] == 1
    leftovers = list(tmp_path.glob(".last.pt.*.tmp.pt"))
    assert len(leftovers) == 1  # the half-written temp file, never under the real name


class Disc(Method):
    """One disc per image, whatever the image; counts its calls."""

    name = "disc"

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        h, w = image.shape[-2:]
        yy, xx = np.mgrid[:h, :w]
        m = ((yy - h // 2) ** 2 + (xx - w // 2) ** 2 < (min(h, w) // 4) ** 2)[None]
        return {"masks": torch.from_numpy(m), "labels": torch.ones(1, dtype=torch.int64), "scores": torch.ones(1)}


def _summary(out):
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_segment_rerun_skips_done_images_and_never_duplicates_rows(tmp_path):
    files = [save_png(tmp_path / "in" / f"{i}.png", np.full((40, 50, 3), 30 * i, np.uint8)) for i in range(4)]
    out = tmp_path / "out"
    quiet = dict(progress=False, log=lambda s: None)
    method = Disc()
    segment_files(files, method, out, SegmentConfig(nuclei="off"), **quiet)
    assert method.calls == 4
    first = _summary(out)
    coco = json.loads((out / "predictions_coco.json").read_text())

    (out / "2_result.json").unlink()  # as if the batch had been killed before image 2 was done
    (out / "3_result.json").write_text('{"image": "trunc')  # ... or while writing image 3's record (not atomic here)
    logs = []
    segment_files(files, method, out, SegmentConfig(nuclei="off"), progress=False, log=logs.append)
    assert method.calls == 4 + 2  # only 2 and 3 again
    assert any("2 image(s) already segmented" in s for s in logs)
    assert _summary(out) == first  # same rows, once each, same order
    again = json.loads((out / "predictions_coco.json").read_text())
    assert again["images"] == coco["images"] and again["annotations"] == coco["annotations"]

    segment_files(files, method, out, SegmentConfig(nuclei="off"), overwrite=True, **quiet)
    assert method.calls == 6 + 4 and _summary(out) == first

    segment_files(files[:2], method, out, SegmentConfig(nuclei="off"), **quiet)  # a subset: a summary of the subset
    assert [r["image"] for r in _summary(out)] == [str(f) for f in files[:2]]

    with pytest.raises(ResultsMismatch, match="other settings \\(config differ\\).*--overwrite"):
        segment_files(files, method, out, SegmentConfig(nuclei="off", min_area=5), **quiet)
    assert [r["image"] for r in _summary(out)] == [str(f) for f in files[:2]]  # nothing written by the refused run


def test_segment_outputs_are_written_atomically(tmp_path, monkeypatch):
    """A writer that dies mid-file leaves the previous complete file (or none), never a partial one."""
    import hemaseg.data.io as io

    files = [save_png(tmp_path / "in" / "a.png", np.full((40, 50, 3), 90, np.uint8))]
    out = tmp_path / "out"
    segment_files(files, Disc(), out, SegmentConfig(nuclei="off"), progress=False, log=lambda s: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_json(path, obj):
        def half(tmp):
            tmp.write_text(json.dumps(obj)[:10])
            raise KeyboardInterrupt  # killed while writing
        return io.atomic_write(path, half)

    monkeypatch.setattr("hemaseg.segment.write_json", broken_json)
    with pytest.raises(KeyboardInterrupt):
        segment_files(files, Disc(), out, SegmentConfig(nuclei="off"), overwrite=True, progress=False, log=lambda s: None)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after["a_result.json"] == before["a_result.json"] and json.loads(after["a_result.json"])
    assert set(after) == set(before)  # no temp file left behind
