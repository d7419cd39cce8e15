"""Issue 7, point 5: the same seed, data and machine give the same split and the same metrics on CPU."""

import csv
import dataclasses
import json
from pathlib import Path

from hemaseg.data.formats import open_dataset
from hemaseg.evaluation import evaluate_method
from hemaseg.predict import ModelMethod, SegmentConfig
from hemaseg.train import train

TIMES = ("train_s", "time_s")  # wall-clock columns: the only ones allowed to differ


def _written(out: Path):
    rows = [{k: v for k, v in r.items() if k not in TIMES} for r in csv.DictReader(open(out / "metrics.csv"))]
    return json.loads((out / "split.json").read_text()), rows


def _run(cfg, out, **kw):
    train(dataclasses.replace(cfg, out=str(out), **kw), progress=False, log=lambda s: None)
    return _written(out)


def test_same_seed_same_split_same_metrics_same_predictions(tiny_run, tmp_path):
    split_a, rows_a = _written(tiny_run.out)
    split_b, rows_b = _run(tiny_run.cfg, tmp_path / "b")  # the shared run's settings, trained again
    assert split_a == split_b
    assert rows_a == rows_b and len(rows_a) == 2  # every loss and validation figure, to the printed digit
    source = open_dataset(tiny_run.data)
    cfg = SegmentConfig(score_threshold=0.3)
    scores = [evaluate_method(ModelMethod.from_checkpoint(r / "best.pt", cfg), source, source.refs, cfg,
                              progress=False).summary for r in (tiny_run.out, tmp_path / "b")]
    for key in ("mean_iou", "f1_50", "mask_AP"):
        assert scores[0][key] == scores[1][key], key

    split_c, rows_c = _run(tiny_run.cfg, tmp_path / "c", seed=tiny_run.cfg.seed + 1)
    assert split_c != split_a  # the seed does decide the split
    assert rows_c != rows_a
