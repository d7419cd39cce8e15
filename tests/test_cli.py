import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hemaseg.cli import app

from conftest import save_png

runner = CliRunner()


def test_synth_then_train_from_the_command_line(tmp_path):
    r = runner.invoke(app, ["synth", "--out", str(tmp_path / "d"), "-n", "4", "--size", "64"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 4
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--epochs", "1",
                            "--batch-size", "2", "--val-fraction", "0.25", "--no-progress", "--scale", "1.5",
                            "--roi-batch-size", "32", "--train-proposals", "200", "--no-amp"])
    assert r.exit_code == 0, r.output
    assert "best epoch 1" in r.output and str(tmp_path / "run" / "best.pt") in r.output
    assert "mixed precision" not in r.output  # --no-amp: float32 even on a CPU with AMX
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["scale"] == 1.5 and config["model"]["arch"] == "resnet18_fpn"
    assert config["model"]["roi_batch_size"] == 32 and config["model"]["rpn_post_nms_train"] == 200
    assert config["train"]["amp"] is False
    assert config["train"]["epochs"] == 1
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train"]) == 3 and len(split["val"]) == 1
    assert config["model"]["classes"][-1] == "nucleus"  # synthetic data has nuclei/: learned by default
    r = runner.invoke(app, ["synth", "--out", str(tmp_path / "d2"), "-n", "4", "--size", "64", "--seed", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "d"), "--data", str(tmp_path / "d2"), "--nuclei", "off",
                            "--out", str(tmp_path / "run2"), "--epochs", "1", "--val-fraction", "0.25", "--no-progress"])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert "nucleus" not in config["model"]["classes"] and len(config["train"]["data"]) == 2
    assert json.loads((tmp_path / "run2" / "split.json").read_text())["sources"] == ["d", "d2"]


def test_bad_data_is_a_clear_error_not_a_traceback(tmp_path):
    save_png(tmp_path / "a.bmp", np.zeros((8, 8, 3), np.uint8))
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert "a.bmp: image has no mask" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--arch", "vgg"])
    assert r.exit_code == 2 and "'vgg' is not one of 'resnet18_fpn', 'resnet50_fpn', 'unet'" in " ".join(r.output.replace("│", " ").split())


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("hemaseg ")


def test_segment_evaluate_compare_from_the_command_line(tiny_run, tmp_path):
    from hemaseg.data.synthetic import SynthConfig, write_dataset

    data = write_dataset(tmp_path / "d", 2, SynthConfig(height=64, width=64), seed=3)
    ckpt = tiny_run.out / "best.pt"  # the session's shared tiny run
    r = runner.invoke(app, ["segment", str(data / "images"), "--model", str(ckpt), "--out", str(tmp_path / "seg"),
                            "--no-progress", "--score-threshold", "0.0"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "seg" / "synth_0000_overlay.png").is_file() and (tmp_path / "seg" / "summary.csv").is_file()
    r = runner.invoke(app, ["segment", str(data / "images"), "--method", "otsu", "--out", str(tmp_path / "otsu"), "--no-progress"])
    assert r.exit_code == 0 and "segmented 2/2 images" in r.output
    r = runner.invoke(app, ["evaluate", "--data", str(data), "--method", "edges", "--out", str(tmp_path / "ev"), "--no-progress"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    from hemaseg.data.formats import open_dataset
    from hemaseg.evaluation import evaluate_method
    from hemaseg.predict import ClassicalMethod

    src = open_dataset(data)
    direct = evaluate_method(ClassicalMethod("edges"), src, src.refs, progress=False).summary  # what the CLI must have written
    assert summary["images"] == 2 and "0.90" in summary["matching"]
    assert summary["mean_iou"] == pytest.approx(direct["mean_iou"]) and summary["f1_50"] == pytest.approx(direct["f1_50"])
    r = runner.invoke(app, ["compare", "--data", str(data), "--model", str(ckpt), "--out", str(tmp_path / "cmp"), "--no-progress",
                            "--run", str(tiny_run.out)])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "cmp" / "compare.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["maskrcnn", "otsu", "edges"]
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert "Training curves" in page and "Instance matching: maskrcnn" in page  # --run: the run's curves are shown
    r = runner.invoke(app, ["segment", str(data / "images"), "--method", "unet", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--model or --unet is needed" in r.output  # maskrcnn alone has the bundled model


def test_segment_with_classifier_and_report(tmp_path):
    from hemaseg.classify import FEATURE_NAMES, LinearClassifier

    n = len(FEATURE_NAMES)
    clf = LinearClassifier(("neutrophil", "lymphocyte"), FEATURE_NAMES, (0.0,) * n, (1.0,) * n,
                           ((0.0,) * n, (0.0,) * n), (0.0, 1.0), threshold=0.5)
    clf.save(tmp_path / "wbc.json")
    yy, xx = np.mgrid[:60, :60]
    img = np.full((60, 60, 3), 230, np.uint8)
    img[(yy - 30) ** 2 + (xx - 30) ** 2 < 20**2] = (150, 90, 170)
    img[(yy - 30) ** 2 + (xx - 30) ** 2 < 9**2] = (60, 30, 90)
    save_png(tmp_path / "in" / "wbc.png", img)
    r = runner.invoke(app, ["segment", str(tmp_path / "in"), "--method", "otsu", "--classifier", str(tmp_path / "wbc.json"),
                            "--out", str(tmp_path / "out"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "lymphocyte 1 (100.0%)" in r.output and (tmp_path / "out" / "differential.html").is_file()
    (tmp_path / "out" / "differential.html").unlink()
    r = runner.invoke(app, ["report", str(tmp_path / "out")])
    assert r.exit_code == 0 and (tmp_path / "out" / "differential.html").is_file()
    r = runner.invoke(app, ["report", str(tmp_path / "in")])
    assert r.exit_code == 2


def test_the_bundled_model_segments_without_model_and_the_demo_finds_the_painted_white_cells(tmp_path):
    from hemaseg.model import BUNDLED_MODEL, data_diameters, read_checkpoint

    assert BUNDLED_MODEL.stat().st_size <= 25e6  # shipped inside the package
    card = (BUNDLED_MODEL.parent / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Zheng" in card and "GPL-3.0" in card
    assert read_checkpoint(BUNDLED_MODEL)["config"]["diameter"] > 0
    assert data_diameters(BUNDLED_MODEL)["dataset2"] > 2 * data_diameters(BUNDLED_MODEL)["dataset1"] * 0.9  # ~2x magnification
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--fields", "2"])
    assert r.exit_code == 0, r.output
    f1 = float(r.output.split("F1@0.5 ")[1].split(",")[0])
    assert f1 >= 0.8, r.output  # painted smears: white cells found and outlined
    field = tmp_path / "demo" / "fields" / "images" / "synth_0000.png"
    r = runner.invoke(app, ["segment", str(field), "--out", str(tmp_path / "seg"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "seg" / "synth_0000_overlay.png").is_file()
    assert "differential of" in r.output and (tmp_path / "seg" / "differential.html").is_file()  # bundled type classifier
    rows = (tmp_path / "seg" / "synth_0000_cells.csv").read_text().splitlines()
    assert len(rows) >= 2 and rows[1].split(",")[1] == "cell" and "type" in rows[0].split(",")
    # --red-cells: red cells and platelets counted, each red cell classed; the report grades them
    r = runner.invoke(app, ["segment", str(field), "--out", str(tmp_path / "red"), "--red-cells", "--pixel-size", "0.19",
                            "--export", "qupath", "--no-progress"])
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "red" / "differential.json").read_text())["red_cells"]
    assert d["red_cells"] >= 10 and sum(m["cells"] for m in d["morphology"]) == d["red_cells"], d
    assert "ICSH grade" in (tmp_path / "red" / "differential.html").read_text()
    names = {f["properties"]["classification"]["name"] for f in json.loads((tmp_path / "red" / "synth_0000.geojson").read_text())["features"]}
    assert any(n.startswith("red_cell: ") for n in names), names  # QuPath's derived class: red_cell: MORPHOLOGY


def test_every_option_of_every_command_is_in_a_named_panel():
    import typer

    group = typer.main.get_command(app)
    panels = set()
    for name, command in group.commands.items():
        loose = [p.name for p in command.params if getattr(p, "rich_help_panel", None) is None]
        assert not loose, f"{name}: {loose} in no panel"
        panels |= {p.rich_help_panel for p in command.params}
    assert panels == {"Input", "Model", "Training", "Scale", "Output", "Hardware", "Linear", "Painting", "Storage", "Network", "Accounts"}


def test_help_groups_options_and_lists_choices_and_old_names_still_work(tmp_path):
    text = runner.invoke(app, ["segment", "--help"], env={"COLUMNS": "200"}).output
    for panel in ("Input", "Model", "Scale", "Output", "Hardware"):
        assert f"─ {panel} ─" in text, panel
    assert "auto|split|off" in text and "maskrcnn|unet|otsu|edges" in text
    assert "--min-area" in text and "--batch-size" in text and "--min-size" not in text  # the old names are hidden
    text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    for panel in ("Input", "Model", "Training", "Output", "Hardware"):
        assert f"─ {panel} ─" in text, panel
    save_png(tmp_path / "a.png", np.full((40, 40, 3), 230, np.uint8))
    new = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--method", "otsu", "--min-area", "50", "--batch-size", "2",
                              "--out", str(tmp_path / "new"), "--no-progress"])
    old = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--method", "otsu", "--min-size", "50", "--batch", "2",
                              "--out", str(tmp_path / "old"), "--no-progress"])
    assert new.exit_code == 0 and old.exit_code == 0, (new.output, old.output)
    assert "warning: --min-size is now --min-area; the old name goes in the next release" in old.output
    assert "warning: --batch is now --batch-size" in old.output and "warning" not in new.output
    settings = [json.loads((tmp_path / d / "a_result.json").read_text())["settings"] for d in ("new", "old")]
    assert settings[0] == settings[1] and settings[0]["config"]["min_area"] == 50


def test_compare_takes_repeated_methods_and_the_old_comma_list(tmp_path):
    from hemaseg.data.synthetic import SynthConfig, write_dataset

    data = write_dataset(tmp_path / "d", 1, SynthConfig(height=64, width=64), seed=3)
    new = runner.invoke(app, ["compare", "--data", str(data), "--method", "edges", "--method", "otsu", "--out", str(tmp_path / "a"),
                              "--no-progress"])
    old = runner.invoke(app, ["compare", "--data", str(data), "--methods", "edges,otsu", "--out", str(tmp_path / "b"), "--no-progress"])
    assert new.exit_code == 0 and old.exit_code == 0, (new.output, old.output)
    rows = [[line.split("|")[1].strip() for line in (tmp_path / d / "compare.md").read_text().splitlines()[2:]] for d in "ab"]
    assert rows == [["edges", "otsu"], ["edges", "otsu"]]
    assert "warning: --methods A,B is now --method A --method B" in old.output


def test_the_choices_of_the_options_are_the_librarys():
    from hemaseg.data.formats import FORMATS
    from hemaseg.model import ARCHITECTURES

    text = " ".join(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "|".join(ARCHITECTURES) in text and "|".join(FORMATS) in text
    r = runner.invoke(app, ["evaluate", "--data", "x", "--out", "y", "--format", "yolo"])
    assert r.exit_code == 2 and "'yolo' is not one of" in r.output
