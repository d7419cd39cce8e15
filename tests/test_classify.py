import json

import numpy as np
import pytest
import torch

from hemaseg.classify import (
    FEATURE_NAMES, UNIDENTIFIED, LinearClassifier, cell_features, fit_linear, read_zheng_classes,
)


def _cell(lobes: bool):
    yy, xx = np.mgrid[:40, :40]
    cell = (yy - 20) ** 2 + (xx - 20) ** 2 < 15**2
    if lobes:
        nucleus = ((yy - 20) ** 2 + (xx - 12) ** 2 < 16) | ((yy - 20) ** 2 + (xx - 28) ** 2 < 16) | ((yy == 20) & (abs(xx - 20) < 8))
    else:
        nucleus = (yy - 20) ** 2 + (xx - 20) ** 2 < 10**2
    image = torch.full((3, 40, 40), 0.8)
    image[:, torch.from_numpy(nucleus)] = 0.3
    return image, cell, nucleus


def test_features_are_named_and_scale_free():
    image, cell, nucleus = _cell(lobes=True)
    f = dict(zip(FEATURE_NAMES, cell_features(image, cell, nucleus)))
    assert len(f) == len(FEATURE_NAMES) and f["nucleus_lobes"] == 2
    assert f["nucleus_r_mean"] == pytest.approx(0.3) and f["cytoplasm_r_mean"] == pytest.approx(0.8)
    big = torch.nn.functional.interpolate(image[None], scale_factor=2, mode="nearest")[0]
    up = lambda m: np.kron(m, np.ones((2, 2), bool))  # noqa: E731
    f2 = dict(zip(FEATURE_NAMES, cell_features(big, up(cell), up(nucleus))))
    assert f2["nc_ratio"] == pytest.approx(f["nc_ratio"], rel=0.02)


def test_fit_predict_threshold_and_json_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X = np.vstack([cell_features(*_cell(lobes=k % 2 == 0)) + rng.normal(0, 0.01, len(FEATURE_NAMES)) for k in range(20)])
    y = ["neutrophil" if k % 2 == 0 else "lymphocyte" for k in range(20)]
    clf = fit_linear(X, y)
    assert clf.classes == ("neutrophil", "lymphocyte")  # the usual order of a differential
    assert [t for t, _ in clf.predict(X)] == y
    again = LinearClassifier.load(clf.save(tmp_path / "c.json"))
    assert np.allclose(again.proba(X), clf.proba(X))
    unsure = LinearClassifier(**{**again.__dict__, "threshold": 1.01})
    assert {t for t, _ in unsure.predict(X)} == {UNIDENTIFIED}


def test_bad_files_are_refused(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a hemaseg white-cell classifier"):
        LinearClassifier.load(tmp_path / "x.json")
    (tmp_path / "classes.csv").write_text("Image ID,class label\n1,2\n2,9\n")
    with pytest.raises(ValueError, match="classes.csv:3"):
        read_zheng_classes(tmp_path / "classes.csv")
    (tmp_path / "ok.csv").write_text("Image ID,class label\n1,2\n12,5\n")
    assert read_zheng_classes(tmp_path / "ok.csv") == {"001": "lymphocyte", "012": "basophil"}
