"""A ``torch.utils.data.Dataset`` over a :class:`~.formats.DatasetSource`, and the seeded split."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import SettingError
from .contract import Target, add_nucleus_instances
from .fields import FieldConfig, compose_field, crop_tones, cut_cells
from .formats import DatasetSource, SampleRef, load_sample, read_label_annotation
from .io import DataError, why
from .transforms import resize_pair


class CellDataset(Dataset):
    """Samples of a dataset as contract ``(image, target)`` pairs, loaded lazily, optionally transformed.

    ``classes`` is the model's class list; the source's class names must all be in it. With
    ``nucleus_label``, each cell's nucleus becomes an instance of that class of its own (after the
    transforms; :func:`~.contract.add_nucleus_instances`) - how a model learns nuclei.

    With ``fields > 0``, that share of the samples (drawn with ``torch``'s generator, seeded per epoch by
    the training loop) become whole smear fields (:mod:`.fields`): the sample's cells and those of
    other samples of this dataset pasted among painted red cells in the sample's colours. ``resize``
    scales every sample as it is loaded (how training brings datasets to one cell diameter).
    """

    def __init__(self, source: DatasetSource, refs: list[SampleRef] | None = None,
                 classes: tuple[str, ...] | None = None, transforms=None, stray: str = "nearest",
                 nucleus_label: int | None = None, fields: float = 0.0, field_config: FieldConfig = FieldConfig(),
                 resize: float = 1.0):
        self.source = source
        self.refs = list(source.refs if refs is None else refs)
        self.classes = tuple(classes or source.classes)
        unknown = [c for c in source.classes if c not in self.classes]
        if unknown:
            raise SettingError(f"{source.root}: classes {unknown} are not among the model's classes {self.classes}")
        self.transforms = transforms
        self.stray = stray
        self.nucleus_label = nucleus_label
        if not 0 <= fields <= 1:
            raise SettingError(f"fields must be a share in [0, 1], got {fields}")
        self.fields, self.field_config = fields, field_config
        if not resize > 0:
            raise SettingError(f"resize must be > 0, got {resize}")
        self.resize = resize

    def __len__(self) -> int:
        return len(self.refs)

    def _load(self, index: int) -> tuple[torch.Tensor, Target]:
        image, target = load_sample(self.refs[index], self.classes, coco=self.source.coco, stray=self.stray)
        if self.resize != 1.0:
            h, w = image.shape[1:]
            image, target = resize_pair(image, target, max(1, round(h * self.resize)), max(1, round(w * self.resize)))
        return image, target

    def field(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, Target]:
        """A whole field around sample ``index``: its cells, those of a few other samples drawn with
        ``rng``, its colours (:func:`.fields.compose_field`)."""
        image, target = self._load(index)
        lo, hi = self.field_config.cells
        others = rng.integers(0, len(self), size=max(0, int(rng.integers(lo, hi + 1)) - 1))
        rim = self.field_config.rim
        cutouts = cut_cells(image, target, rim) + [c for j in others for c in cut_cells(*self._load(int(j)), rim)]
        if not cutouts:  # an image without cells stays as it is
            return image, target
        return compose_field(rng, cutouts, crop_tones(image, target), self.field_config)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        if self.fields and float(torch.rand(())) < self.fields:
            image, target = self.field(index, np.random.default_rng(int(torch.randint(0, 2**62, ()))))
        else:
            image, target = self._load(index)
        target["image_id"] = index
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if self.nucleus_label is not None:
            target = add_nucleus_instances(target, self.nucleus_label)
        return image, target


def repeat_indices(sizes: list[int], factors: list[float], generator: torch.Generator) -> list[int]:
    """One epoch's sample indices into the concatenation of datasets of ``sizes``, dataset ``i`` seen
    ``factors[i]`` times per sample on average (detectron2's repeat factors): every sample ``floor(f)``
    times, plus ``round(frac(f) * size)`` of its samples drawn without replacement once more; shuffled.
    The epoch's length is fixed by ``sizes`` and ``factors``; which samples fill the fractions changes
    with ``generator``.

    >>> idx = repeat_indices([4, 2], [0.5, 2.0], torch.Generator().manual_seed(0))
    >>> len(idx), sorted(i for i in idx if i >= 4), len(set(i for i in idx if i < 4))
    (6, [4, 4, 5, 5], 2)
    """
    out, start = [], 0
    for n, (whole, extra) in zip(sizes, _repeat_counts(sizes, factors)):
        out += list(range(start, start + n)) * whole
        out += (start + torch.randperm(n, generator=generator)[:extra]).tolist()
        start += n
    return [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]


def _repeat_counts(sizes: list[int], factors: list[float]) -> list[tuple[int, int]]:
    """Per dataset: (times every sample is taken, samples taken once more)."""
    if len(sizes) != len(factors):
        raise SettingError(f"{len(factors)} repeat factors for {len(sizes)} datasets")
    if not all(f > 0 for f in factors):
        raise SettingError(f"repeat factors must be > 0, got {list(factors)}")
    return [(int(f), round((f - int(f)) * n)) for n, f in zip(sizes, factors)]


def repeat_length(sizes: list[int], factors: list[float]) -> int:
    """The length of every epoch of :func:`repeat_indices`.

    >>> repeat_length([4, 2], [0.5, 2.0])
    6
    """
    return sum(whole * n + extra for n, (whole, extra) in zip(sizes, _repeat_counts(sizes, factors)))


def cell_diameter(source: DatasetSource, refs: list[SampleRef], classes: tuple[str, ...] | None = None,
                  skip: tuple[str, ...] = ()) -> float | None:
    """Median equivalent diameter (px, the diameter of the disk of the same area) of the annotated cells
    of ``refs``, leaving out classes named in ``skip``; None when there is none.
    """
    classes = tuple(classes or source.classes)
    keep = [i + 1 for i, c in enumerate(classes) if c not in skip]
    areas: list[int] = []
    for ref in refs:
        if ref.format in ("semantic", "instance"):  # label images only: no image read, no N x H x W masks
            ann = read_label_annotation(ref, classes, None)
            counts = np.bincount(np.searchsorted(ann.ids, ann.labels[ann.labels > 0]), minlength=len(ann.ids))
            areas += counts[np.isin(ann.classes, keep)].tolist()
        else:
            _, target = load_sample(ref, classes, coco=source.coco)
            areas += target["masks"].flatten(1).sum(dim=1)[torch.isin(target["labels"], torch.tensor(keep))].tolist()
    diameters = 2 * np.sqrt(np.array(areas, np.float64) / np.pi)
    return float(np.median(diameters[diameters > 0])) if (diameters > 0).any() else None


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
        raise SettingError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(refs, key=lambda r: (str(r.image), r.coco_id or 0))
    random.Random(seed).shuffle(ordered)
    n_val = round(val_fraction * len(ordered))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    return ordered[n_val:], ordered[:n_val]


def collate(batch):
    """Detection batches are lists: ``(images, targets)`` of equal length."""
    return tuple(zip(*batch))


def ref_key(ref: SampleRef, root: Path) -> str:
    """How ``split.json`` names a sample: its image path relative to the dataset root (portable)."""
    try:
        return ref.image.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(ref.image.resolve())


def split_record(train: list[tuple[Path, list[SampleRef]]], val: list[tuple[Path, list[SampleRef]]]) -> dict:
    """The content of a run's ``split.json`` for training and validation samples drawn from one or more
    dataset roots: ``root`` (their common folder), ``sources`` (each root relative to it) and the
    ``train``/``val`` image paths relative to ``root``."""
    roots = list(dict.fromkeys(r.resolve() for r, _ in train + val))
    common = Path(os.path.commonpath(roots)) if roots else Path(".").resolve()
    return {"root": str(common), "sources": [r.relative_to(common).as_posix() for r in roots],
            "train": [ref_key(ref, common) for _, refs in train for ref in refs],
            "val": [ref_key(ref, common) for _, refs in val for ref in refs]}


def select_refs(refs: list[SampleRef], root: Path, split_file: str | Path, subset: str = "val") -> list[SampleRef]:
    """The samples of ``refs`` (a dataset under ``root``) listed under ``subset`` (``train``/``val``) in a
    run's ``split.json``.

    Entries match by path relative to ``root``, by resolved path, or - for a run trained on several
    folders (``sources``) - by their path under the source that is ``root``; entries of the other
    sources are skipped. An entry of this dataset matching nothing is an error.
    """
    try:
        data = json.loads(Path(split_file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # missing, not UTF-8, not JSON
        raise DataError(f"{split_file}: not a readable split.json of `hemaseg train` ({why(err)})") from err
    if not isinstance(data, dict) or subset not in data:
        data = data if isinstance(data, dict) else {}
        raise DataError(f"{split_file}: no '{subset}' list (has {sorted(k for k in data if k not in ('root', 'sources'))})")
    wanted = list(data[subset])
    sources = [s for s in data.get("sources", []) if s not in ("", ".")]
    if sources:
        mine = [s for s in sources if root.resolve().parts[-len(Path(s).parts):] == Path(s).parts]
        if not mine:
            raise SettingError(f"{split_file}: {root} is none of the run's data folders {sources}")
        prefix = mine[0].rstrip("/") + "/"
        wanted = [e[len(prefix):] for e in wanted if e.startswith(prefix)]
    by_key = {ref_key(r, root): r for r in refs}
    by_path = {str(r.image.resolve()): r for r in refs}
    chosen, missing = [], []
    for entry in wanted:
        r = by_key.get(entry) or by_path.get(str(Path(entry).resolve()))
        if r is None:
            missing.append(entry)
        else:
            chosen.append(r)
    if missing:
        raise SettingError(f"{split_file}: {len(missing)} '{subset}' image(s) not in {root}: {missing[:5]}")
    return chosen
