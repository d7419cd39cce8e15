"""Shared fixtures: tiny hand-made data sets on disk, and the real WBC data when it is present."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ZHENG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wbc-zheng2018"


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@dataclass(frozen=True)
class TinyRun:
    """A finished training run: its painted ``data`` folder, its ``cfg``, what :func:`hemaseg.train.train`
    returned and the run folder ``out`` (config.json, split.json, metrics.csv, best.pt, last.pt)."""

    data: Path
    cfg: object
    result: object

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


def tiny_config(data, out, **kw):
    """The shared tiny run's settings (2 epochs of 2 images a step, seed 1), with ``kw`` changed."""
    from hemaseg.train import TrainConfig

    base = dict(data=data if isinstance(data, tuple) else str(data), out=str(out), epochs=2, batch_size=2, warmup_steps=3,
                val_fraction=0.2, seed=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="session")
def smears(tmp_path_factory) -> Path:
    """Ten painted 112x112 smears (four classes, nuclei)."""
    from hemaseg.data.synthetic import SynthConfig, write_dataset

    return write_dataset(tmp_path_factory.mktemp("smears"), 10, SynthConfig(height=112, width=112), seed=5)


@pytest.fixture(scope="session")
def tiny_run(smears, tmp_path_factory) -> TinyRun:
    """One short training run on :func:`smears`, trained once for the whole session and shared by the
    tests that need a trained model or a run folder (test_train, test_reproducibility, test_cli). They
    read it and never write into it."""
    from hemaseg.train import train

    torch.set_num_threads(2)
    cfg = tiny_config(smears, tmp_path_factory.mktemp("tiny") / "run")
    return TinyRun(smears, cfg, train(cfg, progress=False, log=lambda s: None))


@pytest.fixture
def zheng() -> Path:
    if not (ZHENG / "dataset1").is_dir():
        pytest.skip(f"real data not found at {ZHENG}")
    return ZHENG


def save_png(path: Path, arr: np.ndarray) -> Path:
    """Save with PIL (format from the extension), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def semantic_pair(folder: Path, name: str, h: int = 24, w: int = 32, cells=((2, 2, 8, 8),), image_ext=".bmp"):
    """An RGB image and a 0/128/255 mask with rectangular cells (y0, x0, y1, x1), nucleus in the middle."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for y0, x0, y1, x1 in cells:
        mask[y0:y1, x0:x1] = 128
        mask[(y0 + y1) // 2, (x0 + x1) // 2] = 255
    save_png(folder / f"{name}{image_ext}", img)
    mask_name = f"{name}.png" if image_ext != ".png" else f"{name}_masks.png"
    save_png(folder / mask_name, mask)
    return img, mask
