"""Issue 7, point 5: the same seed, data and machine give the same split and the same metrics on CPU."""

import csv
import json

import pytest

from hemaseg.data.synthetic import SynthConfig, write_dataset
from hemaseg.evaluation import evaluate_method
from hemaseg.data.formats import open_dataset
from hemaseg.predict import ModelMethod, SegmentConfig
from hemaseg.train import TrainConfig, train

TIMES = ("train_s", "time_s")  # wall-clock columns: the only ones allowed to differ


@pytest.fixture(scope="module")
def smears(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("smears"), 10, SynthConfig(height=96, width=96), seed=6)


def _run(data, out, seed):
    cfg = TrainConfig(data=str(data), out=str(out), epochs=2, batch_size=2, warmup_steps=3, seed=seed)
    train(cfg, progress=False, log=lambda s: None)
    rows = [{k: v for k, v in r.items() if k not in TIMES} for r in csv.DictReader(open(out / "metrics.csv"))]
    return json.loads((out / "split.json").read_text()), rows


def test_same_seed_same_split_same_metrics_same_predictions(smears, tmp_path):
    split_a, rows_a = _run(smears, tmp_path / "a", seed=3)
    split_b, rows_b = _run(smears, tmp_path / "b", seed=3)
    assert split_a == split_b
    assert rows_a == rows_b and len(rows_a) == 2  # every loss and validation figure, to the printed digit
    source = open_dataset(smears)
    cfg = SegmentConfig(score_threshold=0.3)
    scores = [evaluate_method(ModelMethod.from_checkpoint(tmp_path / r / "best.pt", cfg), source, source.refs, cfg,
                              progress=False).summary for r in ("a", "b")]
    for key in ("mean_iou", "f1_50", "mask_AP"):
        assert scores[0][key] == scores[1][key], key

    split_c, rows_c = _run(smears, tmp_path / "c", seed=4)
    assert split_c != split_a  # the seed does decide the split
    assert rows_c != rows_a
