import numpy as np

from hemaseg.data.contract import validate_target
from hemaseg.data.formats import load_sample, open_dataset
from hemaseg.data.synthetic import CLASSES, PLATELET, RED, WHITE, SynthConfig, generate, write_dataset


def test_generation_is_deterministic_and_consistent():
    cfg = SynthConfig(height=128, width=160)
    a = generate(np.random.default_rng(3), cfg)
    b = generate(np.random.default_rng(3), cfg)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.image.shape == (128, 160, 3) and a.labels.shape == (128, 160)
    n = int(a.labels.max())
    assert sorted(np.unique(a.labels).tolist()) == list(range(n + 1))  # ids 1..N, no gaps
    assert len(a.classes) == n


def test_dense_scenes_with_touching_cells_white_cells_and_nuclei():
    touching = whites = 0
    for k in range(5):
        s = generate(np.random.default_rng([7, k]))
        assert (s.classes == RED).sum() >= 10
        assert (s.classes == PLATELET).sum() >= 1
        # nuclei lie inside white cells only
        nuc_ids = np.unique(s.nuclei[s.nuclei > 0])
        assert all(s.classes[i - 1] == WHITE for i in nuc_ids)
        assert (s.labels[s.nuclei > 0] == s.nuclei[s.nuclei > 0]).all()
        whites += int((s.classes == WHITE).sum())
        # two different cells side by side: horizontally adjacent pixels with different non-zero ids
        l, r = s.labels[:, :-1], s.labels[:, 1:]
        touching += int(((l > 0) & (r > 0) & (l != r)).sum())
    assert whites >= 5 and touching > 0


def test_written_dataset_loads_as_instance_format(tmp_path):
    write_dataset(tmp_path, 3, SynthConfig(height=96, width=96), seed=1)
    src = open_dataset(tmp_path)
    assert src.format == "instance" and set(src.classes) == set(CLASSES)
    assert all(r.nuclei is not None for r in src.refs)
    image, target = load_sample(src.refs[0], src.classes)
    validate_target(image, target)
    s = generate(np.random.default_rng([1, 0]), SynthConfig(height=96, width=96))
    assert len(target["masks"]) == len(s.classes)
    names = [src.classes[i - 1] for i in target["labels"].tolist()]
    assert names == [CLASSES[c - 1] for c in s.classes]
    whites = [i for i, n in enumerate(names) if n == "white_cell"]
    assert all(int(target["nuclei"][i].sum()) > 0 for i in whites)


def test_annotating_only_white_cells_leaves_the_others_painted_but_unlabelled(tmp_path):
    from hemaseg.data.formats import open_dataset
    from hemaseg.data.synthetic import WHITE, only

    cfg = SynthConfig.wbc_field(256, 256, white=(2, 2))
    s = generate(np.random.default_rng(4), cfg)
    labels, names, nuclei = only(s, {"white_cell": "cell"})
    white = [i + 1 for i, c in enumerate(s.classes) if c == WHITE]
    assert names == ["cell"] * len(white) and labels.max() == len(white) >= 1
    assert np.array_equal(labels > 0, np.isin(s.labels, white))
    assert np.array_equal(nuclei > 0, s.nuclei > 0) and (nuclei[nuclei > 0] == labels[nuclei > 0]).all()
    root = write_dataset(tmp_path / "w", 2, cfg, seed=4, annotate={"white_cell": "cell"})
    assert open_dataset(root).classes == ("cell",)
