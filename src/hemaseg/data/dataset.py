"""A ``torch.utils.data.Dataset`` over a :class:`~.formats.DatasetSource`, and the seeded split."""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset

from .contract import Target
from .formats import DatasetSource, SampleRef, load_sample


class CellDataset(Dataset):
    """Samples of a dataset as contract ``(image, target)`` pairs, loaded lazily, optionally transformed.

    ``classes`` is the model's class list; the source's class names must all be in it.
    """

    def __init__(self, source: DatasetSource, refs: list[SampleRef] | None = None,
                 classes: tuple[str, ...] | None = None, transforms=None, stray: str = "nearest"):
        self.source = source
        self.refs = list(source.refs if refs is None else refs)
        self.classes = tuple(classes or source.classes)
        unknown = [c for c in source.classes if c not in self.classes]
        if unknown:
            raise ValueError(f"{source.root}: classes {unknown} are not among the model's classes {self.classes}")
        self.transforms = transforms
        self.stray = stray

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image, target = load_sample(self.refs[index], self.classes, coco=self.source.coco, stray=self.stray)
        target["image_id"] = index
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def split_refs(refs: list[SampleRef], val_fraction: float, seed: int) -> tuple[list[SampleRef], list[SampleRef]]:
    """Shuffle ``refs`` with ``seed`` (sorted by path first, so the split does not depend on listing
    order) and hold out ``round(val_fraction * n)`` of them, at least one when ``val_fraction > 0``.

    >>> from pathlib import Path
    >>> refs = [SampleRef(Path(f"{i}.png"), None, "semantic") for i in range(10)]
    >>> train, val = split_refs(refs, 0.2, seed=0)
    >>> len(train), len(val), split_refs(refs, 0.2, seed=0)[1] == val
    (8, 2, True)
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(refs, key=lambda r: (str(r.image), r.coco_id or 0))
    random.Random(seed).shuffle(ordered)
    n_val = round(val_fraction * len(ordered))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    return ordered[n_val:], ordered[:n_val]


def collate(batch):
    """Detection batches are lists: ``(images, targets)`` of equal length."""
    return tuple(zip(*batch))
