"""The three annotation formats hemaseg reads, all turned into the contract of :mod:`.contract`.

* ``semantic`` - mask folders as in Zheng et al. 2018 and the original recipe: ``NAME.png`` with
  0 background, 128 cytoplasm, 255 nucleus. Every connected cell region (128 or 255) becomes one
  instance and keeps its nucleus (the 255 pixels) in ``target["nuclei"]``. Other values are mapped to
  the nearest of 0/128/255 and reported (``stray="nearest"``) or refused (``stray="error"``).
* ``instance`` - label images (8/16/32-bit PNG or TIFF; 0 background, 1..N cells), with an optional
  class table ``LABELSTEM.csv`` (columns ``label,class``) beside each label image and an optional
  ``nuclei/`` folder of label images whose pixels carry the id of the cell that owns them.
* ``coco`` - a COCO instance JSON (polygons or RLE), read with pycocotools.

Pairing by name (as Cellpose users expect): an image ``NAME.bmp|png|jpg|tif`` goes with the mask
``NAME.png|tif`` either in the same folder (Zheng's ``001.bmp`` beside ``001.png``; a mask may also be
called ``NAME_mask(s)``/``NAME_label(s)``) or in a sibling mask folder (``images*/`` with
``targets*/``, ``masks*/`` or ``labels*/``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from skimage.measure import label as connected_components

from ..errors import SettingError
from .coco_check import check_coco
from .contract import Target, empty_target, image_to_tensor, make_target
from .io import IMAGE_EXTENSIONS, DataError, read_image, read_label_image, why

log = logging.getLogger(__name__)

FORMATS = ("auto", "semantic", "instance", "coco")
SEMANTIC_VALUES = (0, 128, 255)
CYTOPLASM, NUCLEUS = 128, 255
MASK_SUFFIXES = ("_masks", "_mask", "_labels", "_label")
MASK_DIR_PREFIXES = ("targets", "masks", "mask", "labels", "label", "annotations", "gt", "ground_truth")
IMAGE_DIR_PREFIXES = ("images", "image", "imgs", "img")
DEFAULT_MIN_AREA = 10  # pixels; smaller connected bits of a semantic mask are annotation specks


@dataclass(frozen=True)
class SampleRef:
    """Where one annotated image lives. ``annotation`` is a mask/label file, or the COCO JSON."""

    image: Path
    annotation: Path | None
    format: str
    coco_id: int | None = None
    class_table: Path | None = None
    nuclei: Path | None = None

    @property
    def name(self) -> str:
        return self.image.stem


@dataclass
class DatasetSource:
    """A discovered dataset: its samples, class names (id ``i+1`` = ``classes[i]``) and format."""

    refs: list[SampleRef]
    classes: tuple[str, ...]
    format: str
    root: Path
    coco: object | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------------- semantic
def semantic_to_labels(
    mask: np.ndarray, *, stray: str = "nearest", min_area: int = DEFAULT_MIN_AREA, source: str = "mask"
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[int, int]]]:
    """Split a 0/128/255 semantic mask into cells, as label images.

    Returns ``(cells, nuclei, report)``: ``HxW int32`` cells numbered ``1..N`` (connected regions of
    128 or 255 with at least ``min_area`` pixels), ``HxW int32`` holding on each nucleus (255) pixel the
    number of its cell, and ``report = {"stray": {value: pixel count}, "dropped": {area: count}}``.

    >>> m = np.zeros((5, 9), np.uint8); m[1:4, 1:4] = 128; m[2, 2] = 255; m[1:4, 5:8] = 255; m[0, 0] = 7
    >>> cells, nuclei, report = semantic_to_labels(m, min_area=1)
    >>> np.bincount(cells.ravel()).tolist(), np.bincount(nuclei.ravel()).tolist(), report["stray"]
    ([27, 9, 9], [35, 1, 9], {7: 1})
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise DataError(f"{source}: a semantic mask must be 2-D, got shape {m.shape}")
    report: dict[str, dict[int, int]] = {"stray": {}, "dropped": {}}
    values, counts = np.unique(m, return_counts=True)
    odd = {int(v): int(c) for v, c in zip(values, counts) if int(v) not in SEMANTIC_VALUES}
    if odd:
        if stray == "error":
            raise DataError(f"{source}: unexpected mask values {odd} (value: pixels); expected 0, 128, 255")
        if stray != "nearest":
            raise SettingError(f"stray must be 'nearest' or 'error', got {stray!r}")
        report["stray"] = odd
        canon = np.array(SEMANTIC_VALUES)
        lut_vals = np.array(sorted(odd))
        nearest = canon[np.abs(lut_vals[:, None] - canon[None, :]).argmin(axis=1)]
        m = m.copy()
        for v, to in zip(lut_vals, nearest):
            m[m == v] = to
    cells = connected_components(m >= CYTOPLASM, connectivity=2).astype(np.int32)
    areas = np.bincount(cells.ravel())
    small = np.flatnonzero(areas < min_area)
    small = small[small > 0]
    for a in areas[small]:
        report["dropped"][int(a)] = report["dropped"].get(int(a), 0) + 1
    if len(small):
        renumber = np.zeros(len(areas), np.int32)
        kept = np.setdiff1d(np.arange(1, len(areas)), small)
        renumber[kept] = np.arange(1, len(kept) + 1)
        cells = renumber[cells]
    return cells, np.where(m == NUCLEUS, cells, 0).astype(np.int32), report


# --------------------------------------------------------------------------------------- instance
def read_class_table(path: Path) -> dict[int, str]:
    """Read ``label,class`` rows (header required) into ``{label id: class name}``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read class table ({why(err)})") from err
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["label", "class"]:
        raise DataError(f"{path}: a class table needs the header 'label,class'")
    table: dict[int, str] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip().isdigit() or not row[1].strip():
            raise DataError(f"{path}:{line_no}: expected 'label,class' with an integer label, got {row}")
        table[int(row[0])] = row[1].strip()
    return table


# --------------------------------------------------------------------------------------- discovery
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _strip_mask_suffix(stem: str) -> str:
    for suf in MASK_SUFFIXES:
        if stem.lower().endswith(suf):
            return stem[: -len(suf)]
    return stem


def _find_dirs(root: Path) -> tuple[Path, Path] | None:
    subdirs = [d for d in root.iterdir() if d.is_dir()]
    img = [d for d in subdirs if d.name.lower().startswith(IMAGE_DIR_PREFIXES)]
    msk = [d for d in subdirs if d.name.lower().startswith(MASK_DIR_PREFIXES)]
    if not img:  # images beside their masks; a folder of other files (BCCD's annotations/ of VOC XML) is no mask folder
        msk = [d for d in msk if any(_is_image(p) for p in d.iterdir())]
    if len(img) == 1 and len(msk) == 1:
        return img[0], msk[0]
    if img or msk:
        raise DataError(
            f"{root}: expected one image folder (images*/) and one mask folder (targets*/, masks*/, labels*/), "
            f"found {[d.name for d in img]} and {[d.name for d in msk]}"
        )
    return None


def _pair(root: Path) -> list[tuple[Path, Path]]:
    dirs = _find_dirs(root)
    problems: list[str] = []
    pairs: list[tuple[Path, Path]] = []
    if dirs is not None:
        img_dir, mask_dir = dirs
        images = sorted(p for p in img_dir.iterdir() if _is_image(p))
        masks: dict[str, Path] = {}
        for p in sorted(mask_dir.iterdir()):
            if _is_image(p) and p.suffix.lower() in (".png", ".tif", ".tiff"):
                key = _strip_mask_suffix(p.stem)
                if key in masks:
                    problems.append(f"{p}: a second mask for image stem '{key}' (first: {masks[key].name})")
                masks[key] = p
    else:
        files = sorted(p for p in root.iterdir() if _is_image(p))
        by_stem: dict[str, list[Path]] = {}
        for p in files:
            by_stem.setdefault(p.stem, []).append(p)
        images, masks = [], {}
        for p in files:
            stem = p.stem
            if _strip_mask_suffix(stem) != stem:
                masks[_strip_mask_suffix(stem)] = p
            elif len(by_stem[stem]) > 1 and p.suffix.lower() in (".png", ".tif", ".tiff"):
                # NAME.bmp beside NAME.png: the png (or tif) is the mask
                others = [q for q in by_stem[stem] if q is not p]
                if any(q.suffix.lower() not in (".png",) for q in others) and p.suffix.lower() == ".png":
                    masks[stem] = p
                else:
                    images.append(p)
            else:
                images.append(p)
    image_stems = {p.stem for p in images}
    for stem in sorted(image_stems):
        same = [q.name for q in images if q.stem == stem]
        if len(same) > 1:
            problems.append(f"{root}: images {', '.join(same)} share the name '{stem}' - which goes with "
                            f"{masks[stem].name if stem in masks else 'its mask'}? Rename or move all but one")
    for p in images:
        if p.stem not in masks:
            problems.append(f"{p}: image has no mask (looked for {p.stem}.png/.tif or {p.stem}_masks.png)")
        else:
            pairs.append((p, masks[p.stem]))
    for stem, m in masks.items():
        if stem not in image_stems:
            problems.append(f"{m}: mask has no matching image '{stem}.*'")
    if problems:
        raise DataError(f"{root}: {len(problems)} pairing problem(s):\n  " + "\n  ".join(problems[:20]))
    if not pairs:
        raise DataError(f"{root}: no image/mask pairs found (images: {', '.join(IMAGE_EXTENSIONS)})")
    return pairs


def _guess_mask_format(pairs: list[tuple[Path, Path]]) -> str:
    """Semantic 0/128/255 masks or instance label images? Decided from a few masks, on purpose simple:
    a 16/32-bit mask or one whose labelled pixels are mostly neither 128 nor 255 is an instance image."""
    for _, mask_path in pairs[:8]:
        m = read_label_image(mask_path)
        if m.dtype != np.uint8:
            return "instance"
        nonzero = np.count_nonzero(m)
        if nonzero == 0:
            continue
        canonical = np.count_nonzero((m == CYTOPLASM) | (m == NUCLEUS))
        return "semantic" if canonical >= 0.9 * nonzero else "instance"
    return "semantic"


def open_dataset(path: str | Path, format: str = "auto") -> DatasetSource:
    """Find the samples, class names and format of a dataset folder or COCO JSON file."""
    root = Path(path)
    if format not in FORMATS:
        raise SettingError(f"format must be one of {FORMATS}, got {format!r}")
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if format == "coco" or (format == "auto" and root.suffix.lower() == ".json"):
        return _open_coco(root)
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder of images and masks, or a COCO .json file")
    pairs = _pair(root)
    fmt = _guess_mask_format(pairs) if format == "auto" else format
    if fmt == "semantic":
        refs = [SampleRef(img, m, "semantic") for img, m in pairs]
        return DatasetSource(refs, ("cell",), "semantic", root)
    refs = []
    names: set[str] = set()
    nuclei_dir = next((d for d in root.iterdir() if d.is_dir() and d.name.lower().startswith("nuclei")), None)
    for img, m in pairs:
        table = m.with_suffix(".csv")
        table = table if table.is_file() else None
        if table is not None:
            names.update(read_class_table(table).values())
        nuc = None
        if nuclei_dir is not None:
            cands = [nuclei_dir / f"{m.stem}{ext}" for ext in (".png", ".tif", ".tiff")]
            nuc = next((c for c in cands if c.is_file()), None)
        refs.append(SampleRef(img, m, "instance", class_table=table, nuclei=nuc))
    if any(r.class_table is None for r in refs) and names:
        names.add("cell")
    classes = tuple(sorted(names)) if names else ("cell",)
    return DatasetSource(refs, classes, "instance", root)


def _open_coco(path: Path) -> DatasetSource:
    from pycocotools.coco import COCO

    if path.is_dir():
        jsons = sorted(path.glob("*.json"))
        if len(jsons) != 1:
            raise DataError(f"{path}: expected exactly one COCO .json file in the folder, found {len(jsons)}")
        path = jsons[0]
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:  # missing, not UTF-8, not JSON
        raise DataError(f"{path}: cannot read COCO JSON ({why(err)})") from err
    check_coco(path, data)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    cats = sorted(coco.cats.values(), key=lambda c: c["id"])
    classes = tuple(str(c["name"]) for c in cats)
    refs = []
    missing = []
    for img in sorted(coco.imgs.values(), key=lambda i: i["id"]):
        rel = Path(str(img["file_name"]))
        cands = [path.parent / rel, path.parent / "images" / rel, path.parent / rel.name]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            missing.append(f"{rel} (image id {img['id']})")
            continue
        refs.append(SampleRef(found, path, "coco", coco_id=int(img["id"])))
    if missing:
        raise DataError(f"{path}: {len(missing)} image file(s) not found beside the JSON: {', '.join(missing[:10])}")
    if not refs:
        raise DataError(f"{path}: the COCO JSON lists no images")
    return DatasetSource(refs, classes, "coco", path.parent, coco=coco)


# --------------------------------------------------------------------------------------- loading
_reported: set[Path] = set()


@dataclass
class LabelAnnotation:
    """A sample's cells as label images (what :func:`read_label_annotation` returns): ``labels`` HxW
    ints (0 background), cell ``k`` being the pixels equal to ``ids[k]``, of class ``classes[k]``
    (``1..C``); ``nuclei`` HxW ints holding on each nucleus pixel the id of its cell, or None."""

    labels: np.ndarray
    ids: np.ndarray
    classes: np.ndarray
    nuclei: np.ndarray | None

    def target(self) -> Target:
        """The contract target (dense ``N x H x W`` masks)."""
        masks = (self.labels[None] == self.ids[:, None, None]).astype(np.uint8)
        nuclei = None if self.nuclei is None else (self.nuclei[None] == self.ids[:, None, None]).astype(np.uint8)
        return make_target(masks, self.classes, nuclei)


def read_label_annotation(ref: SampleRef, classes: tuple[str, ...], size: tuple[int, int] | None, *, stray: str = "nearest",
                          min_area: int = DEFAULT_MIN_AREA) -> LabelAnnotation:
    """Read a ``semantic`` or ``instance`` sample's annotation as label images, checked against the
    image ``size`` (height, width; None: the image is not read and nothing is checked) - the form that
    stays small for an image of any size and count of cells."""
    if ref.format == "semantic":
        mask = read_label_image(ref.annotation)
        _check_size(mask, size, ref)
        cells, nuclei, report = semantic_to_labels(mask, stray=stray, min_area=min_area, source=str(ref.annotation))
        if (report["stray"] or report["dropped"]) and ref.annotation not in _reported:
            _reported.add(ref.annotation)
            log.warning("%s: stray values mapped to nearest of 0/128/255 %s; specks dropped %s",
                        ref.annotation, report["stray"], report["dropped"])
        n = int(cells.max())
        return LabelAnnotation(cells, np.arange(1, n + 1), np.ones(n, np.int64), nuclei)
    if ref.format == "instance":
        lab = read_label_image(ref.annotation)
        _check_size(lab, size, ref)
        if lab.dtype.kind not in "iub":
            raise DataError(f"{ref.annotation}: a label image must hold integers, got {lab.dtype}")
        ids = np.unique(lab)
        ids = ids[ids > 0].astype(np.int64)
        table = read_class_table(ref.class_table) if ref.class_table else {}
        try:
            labels = np.array([classes.index(table.get(int(i), "cell")) + 1 for i in ids], np.int64)
        except ValueError as err:
            raise DataError(f"{ref.class_table or ref.annotation}: class not in the model's classes {classes}") from err
        nuclei = None
        if ref.nuclei is not None:
            nl = read_label_image(ref.nuclei)
            _check_size(nl, size, ref)
            nuclei = np.where(nl == lab, nl, 0)  # a nucleus pixel counts inside its own cell only
        return LabelAnnotation(lab, ids, labels, nuclei)
    raise ValueError(f"{ref.image}: {ref.format!r} annotations are not label images")


def load_sample(
    ref: SampleRef,
    classes: tuple[str, ...],
    *,
    coco: object | None = None,
    stray: str = "nearest",
    min_area: int = DEFAULT_MIN_AREA,
) -> tuple[torch.Tensor, Target]:
    """Load one sample as a contract ``(image, target)`` pair. Class names map to ids via ``classes``."""
    image = image_to_tensor(read_image(ref.image))
    h, w = image.shape[1:]
    if ref.format in ("semantic", "instance"):
        return image, read_label_annotation(ref, classes, (h, w), stray=stray, min_area=min_area).target()
    if ref.format == "coco":
        if coco is None:
            raise ValueError("load_sample needs the COCO index for a coco sample")
        return image, _coco_target(coco, ref, classes, h, w)
    raise ValueError(f"unknown sample format {ref.format!r}")


def _check_size(mask: np.ndarray, hw: tuple[int, int] | None, ref: SampleRef) -> None:
    if hw is None:
        return
    if tuple(mask.shape) != tuple(hw):
        raise DataError(f"{ref.annotation}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                        f"{ref.image.name} size {hw[1]}x{hw[0]}")


def _coco_target(coco, ref: SampleRef, classes: tuple[str, ...], h: int, w: int) -> Target:
    info = coco.imgs[ref.coco_id]
    if (int(info.get("height", h)), int(info.get("width", w))) != (h, w):
        raise DataError(f"{ref.annotation}: image id {ref.coco_id} is {info.get('width')}x{info.get('height')} "
                        f"in the JSON but {ref.image} is {w}x{h}")
    cat_names = {c["id"]: str(c["name"]) for c in coco.cats.values()}
    masks, labels = [], []
    for ann in coco.imgToAnns.get(ref.coco_id, []):
        if ann.get("iscrowd", 0):
            continue
        if ann.get("category_id") not in cat_names:
            raise DataError(f"{ref.annotation}: annotation {ann.get('id')} has unknown category_id {ann.get('category_id')}")
        try:
            m = coco.annToMask(ann)
        except Exception as err:  # pycocotools raises many types on bad polygons
            raise DataError(f"{ref.annotation}: annotation {ann.get('id')} has a bad segmentation ({err})") from err
        if not m.any():
            raise DataError(f"{ref.annotation}: annotation {ann.get('id')} covers no pixel of image {ref.image.name}")
        masks.append(m)
        labels.append(classes.index(cat_names[ann["category_id"]]) + 1)
    if not masks:
        return empty_target(h, w)
    return make_target(np.stack(masks), labels)


def list_images(inputs: list[str | Path], skipped: list[Path] | None = None) -> list[Path]:
    """Image files named by ``inputs`` (files, or folders searched non-recursively), in order, without
    duplicates. In a folder, files that look like masks are skipped: ``NAME_mask(s)/_label(s).*`` and a
    ``NAME.png`` beside an image ``NAME.bmp|jpg|tif`` (Zheng's layout); so are hemaseg's own outputs
    (``NAME_overlay.png`` beside ``NAME_result.json`` or ``NAME_cells.csv``: a folder segmented into
    itself is not read back) and links to nothing - both appended to ``skipped`` when given.

    A link to nothing named as a file is an error, as is a missing path."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            entries = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS and not q.name.startswith("."))
            broken = [q for q in entries if q.is_symlink() and not q.exists()]
            files = [q for q in entries if q.is_file()]
            stems_non_png = {q.stem for q in files if q.suffix.lower() != ".png"}
            own = [q for q in files if _is_own_output(q)]
            found += [q for q in files if _strip_mask_suffix(q.stem) == q.stem and q not in own
                      and not (q.suffix.lower() == ".png" and q.stem in stems_non_png)]
            if skipped is not None:
                skipped += own + broken
        elif p.is_file():
            found.append(p)
        elif p.is_symlink():
            raise DataError(f"{p}: a link to {os.readlink(p)}, which does not exist")
        else:
            raise DataError(f"{p}: no such file or folder")
    return list(dict.fromkeys(found))


def _is_own_output(p: Path) -> bool:
    """``NAME_overlay.png`` written by ``hemaseg segment`` (its ``NAME_result.json`` or ``NAME_cells.csv`` beside it)."""
    if not p.name.endswith("_overlay.png"):
        return False
    name = p.name[: -len("_overlay.png")]
    return (p.parent / f"{name}_result.json").is_file() or (p.parent / f"{name}_cells.csv").is_file()
