import numpy as np
import pytest
import torch

from hemaseg.data.formats import open_dataset
from hemaseg.cells import Cells
from hemaseg.evaluation import CocoAccumulator, evaluate_method, write_evaluation
from hemaseg.predict import Method, SegmentConfig
from hemaseg.report import evaluation_sections, html_page, markdown_table, compare_rows

from conftest import semantic_pair


def coco_ap(truth, preds, max_dets: int = 1000) -> dict:
    """COCO AP of dense masks: per image ``N x H x W`` true masks and ``(M x H x W masks, M scores)``."""
    acc = CocoAccumulator(max_dets)
    for t, (p, s) in zip(truth, preds):
        h, w = t.shape[1:]
        acc.add(Cells.from_result({"masks": t, "scores": np.ones(len(t)), "labels": np.ones(len(t))}, h, w),
                Cells.from_result({"masks": p, "scores": s, "labels": np.ones(len(p))}, h, w))
    return acc.result()


def _truth():
    t = np.zeros((2, 30, 30), np.uint8)
    t[0, 2:12, 2:12] = 1
    t[1, 15:28, 15:28] = 1
    return t


def test_coco_ap_perfect_missing_and_empty():
    t = _truth()
    perfect = coco_ap([t], [(t, np.array([0.9, 0.8]))])
    assert perfect["mask_AP"] == pytest.approx(1.0) and perfect["box_AP50"] == pytest.approx(1.0)
    half = coco_ap([t], [(t[:1], np.array([0.9]))])
    assert half["mask_AP50"] == pytest.approx(0.5, abs=0.01)  # recall stops at 0.5
    assert coco_ap([t], [(np.zeros((0, 30, 30)), np.zeros(0))])["mask_AP"] == 0.0


def test_many_detections_are_not_capped_at_100():
    t = np.zeros((150, 40, 150), np.uint8)
    for i in range(150):
        t[i, (i // 50) * 10:(i // 50) * 10 + 5, (i % 50) * 3:(i % 50) * 3 + 2] = 1
    ap = coco_ap([t], [(t, np.linspace(1, 0.5, 150))])
    assert ap["mask_AP"] == pytest.approx(1.0)


class HalfOracle(Method):
    """Predicts the true cells of the first image, nothing on the others."""

    name = "half"

    def __init__(self, source):
        self.source, self.calls = source, 0

    def __call__(self, image):
        self.calls += 1
        from hemaseg.data.formats import load_sample

        _, target = load_sample(self.source.refs[0], self.source.classes)
        if self.calls > 1:
            target["masks"] = target["masks"][:0]
        n = len(target["masks"])
        return {"masks": target["masks"], "labels": torch.ones(n, dtype=torch.int64), "scores": torch.ones(n)}


def test_evaluate_method_writes_scores_figures_and_an_offline_report(tmp_path):
    semantic_pair(tmp_path / "d", "a", cells=[(2, 2, 10, 10), (12, 14, 20, 28)])
    semantic_pair(tmp_path / "d", "b", cells=[(2, 2, 10, 10)])
    src = open_dataset(tmp_path / "d")
    ev = evaluate_method(HalfOracle(src), src, src.refs, progress=False)
    assert [round(r["iou"], 3) for r in ev.per_image] == [1.0, 0.0]
    assert ev.summary["mean_iou"] == pytest.approx(0.5)
    assert ev.summary["matching"]["0.90"]["tp"] == 2 and ev.summary["matching"]["0.50"]["fn"] == 1
    assert ev.summary["f1_50"] == pytest.approx(2 * 2 / (3 + 2))
    written = write_evaluation(ev, tmp_path / "out", n_figures=1)
    assert written["summary"].is_file() and written["per_image"].is_file()
    figures = {k: p.read_bytes() for k, p in written.items() if k.startswith("figure_")}
    assert len(figures) == 2
    page = html_page("t", evaluation_sections([ev], figures))
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    table = markdown_table(compare_rows([ev]))
    assert table.splitlines()[2].startswith("| half | 2 | 0.5000")


class NucleusOracle(Method):
    """The true cells of each image, with a learned nucleus: the true one, or (``shrink``) its first half row-wise."""

    name = "nuclei"

    def __init__(self, source, shrink=False):
        self.source, self.shrink, self.i = source, shrink, 0

    def __call__(self, image):
        from hemaseg.data.formats import load_sample

        _, t = load_sample(self.source.refs[self.i], self.source.classes)
        self.i += 1
        nuclei = t["nuclei"].clone()
        if self.shrink:
            rows = nuclei.any(dim=2).nonzero()
            for k, r in zip(rows[:, 0].tolist(), rows[:, 1].tolist()):
                if r % 2:
                    nuclei[k, r] = 0
        n = len(t["masks"])
        return {"masks": t["masks"], "labels": torch.ones(n, dtype=torch.int64), "scores": torch.ones(n), "nuclei": nuclei}


def test_nucleus_dice_and_iou_of_learned_nuclei(tmp_path):
    semantic_pair(tmp_path / "d", "a", h=30, w=30, cells=[(2, 2, 14, 14)])
    src = open_dataset(tmp_path / "d")
    ev = evaluate_method(NucleusOracle(src), src, src.refs, progress=False)
    assert ev.summary["nucleus_dice"] == 1.0 and ev.summary["nucleus_iou"] == 1.0
    off = evaluate_method(NucleusOracle(src), src, src.refs, SegmentConfig(nuclei="off"), progress=False)
    assert "nucleus_dice" not in off.summary and "nucleus_dice" not in off.per_image[0]
    assert "nucleus IoU" in markdown_table(compare_rows([ev]))


def test_nucleus_scores_by_hand(tmp_path):
    img, mask = semantic_pair(tmp_path / "d", "a", h=30, w=30, cells=[(2, 2, 14, 14)])
    mask[6:10, 6:10] = 255  # a 4x4 true nucleus
    from conftest import save_png

    save_png(tmp_path / "d" / "a.png", mask)
    src = open_dataset(tmp_path / "d")
    ev = evaluate_method(NucleusOracle(src, shrink=True), src, src.refs, progress=False)
    # predicted: 2 of the 4 rows (8 px) of the 16 px nucleus -> Dice 16/24, IoU 8/16
    assert ev.summary["nucleus_dice"] == pytest.approx(2 * 8 / 24) and ev.summary["nucleus_iou"] == pytest.approx(0.5)


def test_evaluation_of_a_tiled_image_scores_like_untiled(tmp_path):
    from conftest import save_png
    from test_tiling import Components, _disks

    image, truth = _disks(500, 600, 60, seed=5)
    save_png(tmp_path / "d" / "images" / "f.png", image)
    save_png(tmp_path / "d" / "labels" / "f.png", truth.astype(np.uint16))
    src = open_dataset(tmp_path / "d")
    whole = evaluate_method(Components(), src, src.refs, SegmentConfig(tile=2048), progress=False).summary
    tiled = evaluate_method(Components(), src, src.refs, SegmentConfig(tile=200, overlap=80), progress=False).summary
    assert whole["f1_50"] == tiled["f1_50"] == 1.0 and whole["mean_iou"] == tiled["mean_iou"] == 1.0
    assert tiled["matching"]["0.90"]["tp"] == 60 and tiled["mask_AP"] == pytest.approx(1.0)


def test_truth_is_read_sparse_and_equals_the_dense_target(tmp_path):
    from conftest import save_png
    from hemaseg.data.formats import load_sample
    from hemaseg.evaluation import load_truth

    lab = np.zeros((40, 50), np.uint16)
    lab[2:10, 3:9], lab[20:30, 30:45], lab[5:7, 40:42] = 4, 9, 2  # ids need not be consecutive
    nuclei = np.where(lab == 9, 9, 0).astype(np.uint16)
    nuclei[22:24, 32:34] = 0
    save_png(tmp_path / "d" / "images" / "a.png", np.full((40, 50, 3), 200, np.uint8))
    save_png(tmp_path / "d" / "labels" / "a.png", lab)
    save_png(tmp_path / "d" / "nuclei" / "a.png", nuclei)
    (tmp_path / "d" / "labels" / "a.csv").write_text("label,class\n2,platelet\n4,cell\n9,cell\n")
    src = open_dataset(tmp_path / "d")
    _, truth = load_truth(src, src.refs[0])
    _, target = load_sample(src.refs[0], src.classes)
    assert np.array_equal(truth.dense(), target["masks"].numpy())
    assert np.array_equal(truth.dense(nuclei=True), target["nuclei"].numpy())
    assert truth.labels.tolist() == target["labels"].tolist() and truth.boxes.tolist() == target["boxes"].int().tolist()


def test_evaluating_a_large_annotated_image_never_holds_dense_masks(tmp_path):
    import tracemalloc

    from conftest import save_png
    from test_tiling import Components, _disks

    image, truth = _disks(1000, 1000, 250, seed=2)  # dense truth or predictions: 250 x 1 MB each
    assert truth.max() == 250
    save_png(tmp_path / "d" / "images" / "big.png", image)
    save_png(tmp_path / "d" / "labels" / "big.png", truth.astype(np.uint16))
    src = open_dataset(tmp_path / "d")
    tracemalloc.start()
    summary = evaluate_method(Components(), src, src.refs, SegmentConfig(tile=300, overlap=80), progress=False).summary
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert summary["f1_50"] == 1.0 and summary["matching"]["0.90"]["tp"] == 250
    assert peak < 100e6, f"peak {peak / 1e6:.0f} MB"


def test_predictions_already_computed_are_scored_without_running_the_method(tmp_path):
    from hemaseg.predict import run_method

    semantic_pair(tmp_path / "d", "a", cells=[(2, 2, 10, 10), (12, 14, 20, 28)])
    semantic_pair(tmp_path / "d", "b", cells=[(2, 2, 10, 10)])
    src = open_dataset(tmp_path / "d")
    oracle = HalfOracle(src)
    cfg = SegmentConfig(nuclei="off")
    from hemaseg.evaluation import load_truth

    cells = {str(r.image): run_method(oracle, load_truth(src, r)[0], cfg) for r in src.refs}
    assert oracle.calls == 2
    ev = evaluate_method(oracle, src, src.refs, cfg, progress=False, predictions=cells)
    assert oracle.calls == 2  # not run again
    assert [round(r["iou"], 3) for r in ev.per_image] == [1.0, 0.0]
    assert ev.summary["f1_50"] == pytest.approx(2 * 2 / (3 + 2))
