import json

import numpy as np
import pytest
import torch

from hemaseg.classify import (
    FEATURE_NAMES, UNIDENTIFIED, LinearClassifier, cell_features, fit_linear, read_type_labels, type_of,
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
        read_type_labels(tmp_path / "classes.csv")
    (tmp_path / "ok.csv").write_text("Image ID,class label\n1,2\n012,5\nslide b cell,Monocyte\n")
    labels = read_type_labels(tmp_path / "ok.csv")
    assert labels == {"1": "lymphocyte", "12": "basophil", "slide b cell": "monocyte"}
    assert [type_of(labels, s) for s in ("001", "12", "slide b cell", "002", "x")] == ["lymphocyte", "basophil", "monocyte", None, None]


def _crops(folder, n=10):
    """Zheng-like semantic crops: even ids a two-lobed nucleus (neutrophil), odd a round one (lymphocyte)."""
    from conftest import save_png

    rows = ["Image ID,class label"]
    for i in range(1, n + 1):
        image, cell, nucleus = _cell(lobes=i % 2 == 0)
        rgb = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        rgb[~cell] = 230
        mask = np.where(nucleus, 255, np.where(cell, 128, 0)).astype(np.uint8)
        save_png(folder / f"{i:03d}.bmp", rgb)
        save_png(folder / f"{i:03d}.png", mask)
        rows.append(f"{i},{1 if i % 2 == 0 else 2}")
    (folder.parent / f"{folder.name}.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_labelled_cells_and_cross_validation(tmp_path):
    from hemaseg.classify import cross_validate, labelled_cells
    from hemaseg.data.formats import open_dataset

    src = open_dataset(_crops(tmp_path / "crops"))
    X, y, where = labelled_cells(src, read_type_labels(tmp_path / "crops.csv"))
    assert len(X) == 10 and y[:2] == ["lymphocyte", "neutrophil"] and where[0].endswith("001.bmp")
    lobes = dict(zip(y, X[:, FEATURE_NAMES.index("nucleus_lobes")]))
    assert lobes == {"lymphocyte": 1, "neutrophil": 2}
    cv = cross_validate(X, y, folds=5, seed=0)
    assert cv["folds"] == 5 and cv["accuracy"] == 1.0 and cv["balanced_accuracy"] == 1.0
    assert cv["per_class"]["neutrophil"] == {"n": 5, "precision": 1.0, "recall": 1.0}
    assert cv["confusion"] == [[5, 0], [0, 5]] and cv["unidentified"] == 0 and cv["few"] == []
    with pytest.raises(ValueError, match="no labelled white cell"):
        labelled_cells(src, None)  # class 'cell' is no type, and no table
    with pytest.raises(ValueError, match="3 folds"):
        cross_validate(X[:2], y[:2], folds=3)


def test_fit_classifier_command_writes_a_loadable_classifier_with_its_validation(tmp_path):
    from typer.testing import CliRunner

    from hemaseg.cli import app

    data = _crops(tmp_path / "crops")
    out = tmp_path / "wbc.json"
    r = CliRunner().invoke(app, ["fit-classifier", "--kind", "linear", "--data", str(data), "--labels", str(tmp_path / "crops.csv"),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "10 cells, 5-fold cross-validation: accuracy 1.000" in r.output
    clf = LinearClassifier.load(out)
    assert clf.classes == ("neutrophil", "lymphocyte")
    assert json.loads(out.read_text())["validation"]["balanced_accuracy"] == 1.0
    r = CliRunner().invoke(app, ["fit-classifier", "--kind", "linear", "--data", str(data), "--data", str(data),
                                 "--labels", str(tmp_path / "crops.csv"), "--out", str(out)])
    assert r.exit_code == 2 and "1 --labels for 2 --data" in r.output


def test_cells_annotated_with_type_classes_are_labelled_by_their_class(tmp_path):
    from conftest import save_png

    from hemaseg.classify import labelled_cells
    from hemaseg.data.formats import open_dataset

    image, cell, nucleus = _cell(lobes=True)
    rgb = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    lab = np.zeros((40, 80), np.uint16)
    lab[:, :40][cell] = 1  # a neutrophil
    lab[5:10, 45:50] = 2  # a red cell: not a type, not used
    save_png(tmp_path / "images" / "a.png", np.concatenate([rgb, rgb], axis=1))
    save_png(tmp_path / "labels" / "a.png", lab)
    (tmp_path / "labels" / "a.csv").write_text("label,class\n1,Neutrophil\n2,red_cell\n")
    X, y, _ = labelled_cells(open_dataset(tmp_path))
    assert y == ["neutrophil"] and X[0, FEATURE_NAMES.index("nucleus_lobes")] == 2  # split nucleus: no nuclei/ folder
