import os
import subprocess
import sys


from hemaseg.data.synthetic import SynthConfig, write_dataset
from hemaseg.model import load_model, read_checkpoint


def _torchrun(*args, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hemaseg.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_torchrun_two_cpu_processes_train_with_equal_weights(tmp_path):
    data = write_dataset(tmp_path / "d", 6, SynthConfig(height=64, width=64), seed=2)
    r = _torchrun("train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "1",
                  "--val-fraction", "0.34", "--warmup", "2", "--no-progress")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "2 processes (gloo)" in out
    assert out.count("weights equal on all 2 processes") == 2  # one line per epoch, from process 0 only
    assert out.count("done in") == 1
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 2 and len(state["history"]) == 2
    # 4 training images, 2 processes, batch 1: 2 optimizer steps per epoch and process
    assert state["scheduler"]["last_epoch"] == 4
    load_model(tmp_path / "run" / "best.pt")


def test_sharded_segment_merges_to_the_single_process_result(tmp_path):
    data = write_dataset(tmp_path / "d", 5, SynthConfig(height=96, width=96), seed=4)
    (data / "images" / "broken.png").write_bytes(b"not a png")  # a failure on one of the shards
    single = subprocess.run([sys.executable, "-m", "hemaseg", "segment", str(data / "images"), "--method", "otsu",
                             "--out", str(tmp_path / "one"), "--no-progress"], capture_output=True, text=True)
    assert single.returncode == 1, single.stderr[-2000:]  # exit 1: a file failed
    r = _torchrun("segment", str(data / "images"), "--method", "otsu", "--out", str(tmp_path / "two"), "--no-progress")
    assert r.returncode != 0 and "1 image(s) failed" in r.stdout + r.stderr
    for name in ("summary.csv", "predictions_coco.json"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text(), name
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    rows = (tmp_path / "two" / "summary.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[1].split(",")[2] == "failed"  # header + 6 files, in file order
