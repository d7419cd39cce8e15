"""Shared fixtures: tiny hand-made data sets on disk, and the real WBC data when it is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ZHENG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wbc-zheng2018"


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


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
