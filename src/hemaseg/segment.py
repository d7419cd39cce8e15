"""Segment image files in batch and write, per image, atomically: a label image, an overlay, a per-cell
CSV (with nucleus, cytoplasm, N:C ratio and lobes for white cells); and for the batch a summary CSV and
a COCO JSON with every instance mask and score.

Images larger than ``SegmentConfig.tile`` are segmented in overlapping tiles and every cell is kept
sparse (:mod:`hemaseg.tiling`), so memory grows with the image, not with image x cells. A file that
fails (unreadable, wrong format ...) is reported in the summary and the batch goes on.

Each image's files are followed by ``NAME_result.json`` (its summary row and COCO annotations), written
last: it marks the image done. Segmenting into the same folder again skips the images done with the same
settings (a killed batch resumes where it stopped) unless ``overwrite``; results made with other settings
are refused rather than mixed. The summary and the COCO JSON are rebuilt for the files asked for, once
each, whatever was done before.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .cells import Cells, encode_rle_in_box
from .classify import UNIDENTIFIED, LinearClassifier, cell_features
from .data.contract import crop_image, image_to_rgb8
from .data.io import csv_text, read_image, write_image, write_json, write_text
from .distributed import Dist
from .export import write_imagej_rois, write_qupath_geojson
from .measure import columns, measure
from .nuclei import NUCLEATED, cell_nuclei
from .predict import Method, SegmentConfig, image_scale, run_method, run_methods
from .scale import ScaleEstimate
from .viz import overlay_cells


@dataclass
class SegmentSummary:
    out: Path
    rows: list[dict] = field(default_factory=list)  # one per image
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, error)
    cells: dict[str, Cells] = field(default_factory=dict)  # file -> its cells, with ``keep_cells`` only


SCALE_COLUMNS = ("scale", "pixel_size_um", "scale_trusted", "red_cell_px", "resize")  # summary.csv, per image


def scale_columns(scale: ScaleEstimate) -> dict:
    """An image's scale as summary columns: how it was found (``estimated``, ``pixel-size``, ``diameter``,
    ``none``), um per px, whether it is trusted, a normal red cell's diameter in px, the resize applied.

    >>> scale_columns(ScaleEstimate(0.1, resize=0.625))
    {'scale': 'estimated', 'pixel_size_um': 0.1, 'scale_trusted': True, 'red_cell_px': 75.0, 'resize': 0.625}
    """
    return {"scale": scale.source, "pixel_size_um": scale.pixel_size, "scale_trusted": scale.confident,
            "red_cell_px": scale.red_cell_px, "resize": round(scale.resize, 4)}


def measuring_scale(scale: ScaleEstimate, given: float | None = None) -> tuple[float | None, str]:
    """The um per px for an image's measurements and how it is known: the user's ``--pixel-size``
    ``given`` (``given``), a trusted estimate (``estimated``), or none (``None, ""``: measurements in px only).

    >>> measuring_scale(ScaleEstimate(0.1)), measuring_scale(ScaleEstimate(0.1, confident=False)), measuring_scale(ScaleEstimate(None, "none"), 0.2)
    ((0.1, 'estimated'), (None, ''), (0.2, 'given'))
    """
    if given is not None:
        return given, "given"
    if scale.source == "estimated" and scale.confident:
        return scale.pixel_size, "estimated"
    return None, ""


def typing_pixel_size(method: Method, scale: ScaleEstimate, cfg: SegmentConfig) -> float | None:
    """The um per px at which an image's cells are typed: the scale the segmentation saw it at (the
    model's pixel size over the resize: the estimate, --pixel-size, --diameter, or the model's own scale
    when the image was used as it is); else the given or estimated pixel size; else None.

    >>> m = Method(); m.pixel_size = 0.16
    >>> typing_pixel_size(m, ScaleEstimate(0.08, resize=0.5), SegmentConfig())
    0.08
    """
    if method.pixel_size is not None:
        return method.pixel_size * scale.resize
    return cfg.pixel_size or scale.pixel_size


def type_columns(classifier) -> list[str]:
    """The per-cell CSV's type columns: the call and its probability; a cell-image classifier also gives
    the most probable type (even when the call is unidentified) and the second with its probability."""
    if isinstance(classifier, LinearClassifier):
        return ["type", "type_confidence"]
    return ["type", "type_confidence", "top_type", "second_type", "second_confidence"]


def type_rows(classifier, raw, cells: Cells, rows: list[dict], pixel_size: float | None) -> None:
    """Add each nucleated cell's type columns (:func:`type_columns`) to its row of ``rows``."""
    typed = [k for k, row in enumerate(rows) if row["class"].lower() in NUCLEATED]
    if not typed:
        return
    if isinstance(classifier, LinearClassifier):
        for k in typed:
            rows[k]["type"], conf = classifier.predict(cell_features(crop_image(raw, cells.boxes[k]), cells.masks[k],
                                                                     cells.nuclei[k])[None])[0]
            rows[k]["type_confidence"] = round(conf, 4)
        return
    px = pixel_size if pixel_size is not None else classifier.cfg.pixel_size
    calls = classifier.type_cells(image_to_rgb8(raw), np.asarray(cells.boxes)[typed], px)
    for k, c in zip(typed, calls):
        rows[k].update(type=c.type, type_confidence=c.confidence, top_type=c.top, second_type=c.second,
                       second_confidence=c.second_confidence)


def _unique_name(stem: str, taken: set[str]) -> str:
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}_{k}", k + 1
    taken.add(name)
    return name


class ResultsMismatch(ValueError):
    """The output folder holds an image's results made with other settings (and overwrite is off)."""


def _settings(method: Method, cfg: SegmentConfig, classifier) -> dict:
    """What decides an image's results, to tell whether results already in the folder can be kept (not
    ``cfg.batch``: the same cells whatever the batch)."""
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "batch"}
    return json.loads(json.dumps({"method": method.name, "model": method.source, "config": config,
                                  "classifier": None if classifier is None else [type(classifier).__name__, *classifier.classes,
                                                                                  getattr(getattr(classifier, "cfg", None), "threshold", None)]}))


def _done(path: Path, image: Path, settings: dict) -> dict | None:
    """The record of ``image`` already segmented into ``path`` with ``settings``, or None (not done,
    another image's, or unreadable: then it is segmented again). Other settings: :class:`ResultsMismatch`."""
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
        if done.get("image") != str(image):
            return None
        keys = {"row", "coco_image", "annotations", "settings"}
        if not keys <= set(done):
            return None
    except (OSError, ValueError):
        return None
    if done["settings"] != settings:
        changed = sorted(k for k in settings if done["settings"].get(k) != settings[k])
        raise ResultsMismatch(f"{path}: {image} was segmented here with other settings ({', '.join(changed)} differ); "
                              "pass --overwrite to redo it, or choose another --out")
    return done


def segment_files(files: list[Path], method: Method, out: str | Path, cfg: SegmentConfig = SegmentConfig(),
                  progress: bool = True, log: Callable[[str], None] = print,
                  classifier=None, group: Dist | None = None,
                  keep_cells: bool = False, overwrite: bool = False) -> SegmentSummary:
    """Segment ``files`` with ``method`` into ``out`` (see the module docstring for the files).

    With a white-cell ``classifier`` (:class:`hemaseg.celltypes.CellTypeClassifier`, or a
    :class:`hemaseg.classify.LinearClassifier`), nucleated cells also get a ``type`` (or ``unidentified``),
    its probability and the runner-up (:func:`type_columns`), and the summary counts cells per type.

    With a process ``group`` (:mod:`hemaseg.distributed`, e.g. under ``torchrun``), process ``r`` of ``n``
    segments files ``r, r+n, ...``; process 0 gathers the rows and writes one summary and one COCO JSON,
    identical to a single-process run's. Only process 0's returned summary lists every file.

    ``keep_cells`` keeps each file's :class:`~hemaseg.cells.Cells` (nuclei included) in the summary,
    e.g. to score them against a truth (``evaluate_method(..., predictions=)``) without segmenting twice
    (it segments every file again, as ``overwrite``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = SegmentSummary(out)
    taken: set[str] = set()
    names_all = [_unique_name(p.stem, taken) for p in files]  # the same on every process
    mine = range(len(files)) if group is None else range(group.rank, len(files), group.world)
    coco_images, coco_anns = [], []
    classes = list(method.classes)
    with_nuclei = cfg.nuclei != "off" and any(c.lower() in NUCLEATED for c in classes)
    types = [*classifier.classes, UNIDENTIFIED] if classifier is not None and with_nuclei else []
    settings = _settings(method, cfg, classifier)
    reused = 0

    def failed(index: int, err: Exception) -> None:  # one bad file must not abort the batch
        path = files[index]
        summary.failed.append((str(path), f"{err.__class__.__name__}: {err}"))
        summary.rows.append({"image": str(path), "name": names_all[index], "status": "failed", "error": str(err), "cells": 0,
                             "_index": index})
        log(f"failed: {err}" if str(err).startswith(str(path)) else f"failed: {path}: {err}")

    def write(index: int, raw, cells: Cells, scale: ScaleEstimate) -> None:
        path, name, image_id = files[index], names_all[index], index + 1
        names = [classes[i - 1] for i in cells.labels.tolist()]
        pixel_size, um_scale = measuring_scale(scale, cfg.pixel_size)
        cells.nuclei = cell_nuclei(raw, cells, names, learned=cfg.nuclei == "auto") if with_nuclei else None
        if keep_cells:
            summary.cells[str(path)] = cells
        lab = cells.label_image()
        write_image(out / f"{name}_labels.{'png' if lab.dtype == np.uint16 else 'tif'}", lab)
        write_image(out / f"{name}_overlay.png", overlay_cells(image_to_rgb8(raw), cells))
        rows = measure(cells, names, pixel_size, nuclei=with_nuclei)
        for row in rows:
            row["um_scale"] = um_scale
        if classifier is not None and with_nuclei:
            type_rows(classifier, raw, cells, rows, typing_pixel_size(method, scale, cfg))
        cell_columns = (columns(pixel_size, nuclei=with_nuclei) + (["um_scale"] if pixel_size else [])
                        + (type_columns(classifier) if classifier else []))
        write_text(out / f"{name}_cells.csv", csv_text(rows, cell_columns))
        if "imagej" in cfg.exports:
            write_imagej_rois(out / f"{name}_rois.zip", cells, names)
        if "qupath" in cfg.exports:
            write_qupath_geojson(out / f"{name}.geojson", cells, names, rows)
        if "tiff" in cfg.exports and lab.dtype == np.uint16:  # (beyond 65535 cells the labels are TIFF already)
            write_image(out / f"{name}_labels.tif", lab)
        row = {"image": str(path), "name": name, "status": "ok", "error": "", "cells": len(rows), **scale_columns(scale),
               "_index": index}
        for c in classes:
            row[f"n_{c}"] = names.count(c)
        for t in types:
            row[f"n_{t}"] = sum(r.get("type") == t for r in rows)
        summary.rows.append(row)
        h, w = lab.shape
        image_info = {"id": image_id, "file_name": str(path), "height": h, "width": w}
        anns = [{"id": 0, "image_id": image_id, "category_id": int(c), "segmentation": encode_rle_in_box(m, box, h, w),
                 "area": float(m.sum()),
                 "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                 "score": round(float(score), 5), "iscrowd": 0, "cell_id": k + 1}
                for k, (box, m, c, score) in enumerate(zip(cells.boxes, cells.masks, cells.labels, cells.scores))]
        coco_images.append(image_info)
        coco_anns.extend(anns)
        write_json(out / f"{name}_result.json", {"image": str(path), "settings": settings,
                                                  "row": {k: v for k, v in row.items() if k != "_index"},
                                                  "coco_image": image_info, "annotations": anns})

    bar = tqdm(total=len(mine), desc=f"segment ({method.name})", disable=not progress)
    order = list(mine)
    for start in range(0, len(order), cfg.batch):  # cfg.batch images read, then segmented together (run_methods)
        todo = []
        for index in order[start : start + cfg.batch]:
            path, name, image_id = files[index], names_all[index], index + 1
            done = None if (overwrite or keep_cells) else _done(out / f"{name}_result.json", path, settings)
            if done is not None:
                summary.rows.append({**done["row"], "name": name, "_index": index})
                coco_images.append({**done["coco_image"], "id": image_id})
                coco_anns.extend({**a, "image_id": image_id} for a in done["annotations"])
                reused += 1
                continue
            try:
                todo.append((index, read_image(path)))
            except Exception as err:
                failed(index, err)
        scales = [image_scale(method, raw, cfg) for _, raw in todo]
        for (index, _), sc in zip(todo, scales):
            if sc.source != "none" or method.scale_net is not None:
                log(f"{files[index].name}: scale {sc.describe()}" + (f", seen x{sc.resize:.3f}" if sc.resize != 1 else ""))
        try:
            found = run_methods(method, [raw for _, raw in todo], cfg, [sc.resize for sc in scales])
        except Exception:  # one image spoilt the batch: each on its own, to tell which
            found = []
            for (_, raw), sc in zip(todo, scales):
                try:
                    found.append(run_method(method, raw, cfg, sc.resize))
                except Exception as err:
                    found.append(err)
        for (index, raw), cells, sc in zip(todo, found, scales):
            if isinstance(cells, Exception):
                failed(index, cells)
            else:
                write(index, raw, cells, sc)
        bar.update(len(order[start : start + cfg.batch]))
    bar.close()
    if reused:
        log(f"{reused} image(s) already segmented in {out} with these settings: kept (--overwrite to redo them)")
    if group is not None:  # process 0 gathers every process's share
        shares = group.gather((summary.rows, summary.failed, coco_images, coco_anns))
        if not group.main:
            return summary
        summary.rows = [r for share in shares for r in share[0]]
        summary.failed = [f for share in shares for f in share[1]]
        coco_images = [i for share in shares for i in share[2]]
        coco_anns = [a for share in shares for a in share[3]]
    summary.rows.sort(key=lambda r: r.pop("_index"))
    position = {str(p): i for i, p in enumerate(files)}
    summary.failed.sort(key=lambda f: position[f[0]])
    coco_images.sort(key=lambda i: i["id"])
    coco_anns.sort(key=lambda a: (a["image_id"], a["cell_id"]))
    for k, ann in enumerate(coco_anns, start=1):
        ann["id"] = k
    header = ["image", "name", "status", "error", "cells", *SCALE_COLUMNS] + [f"n_{c}" for c in classes] + [f"n_{t}" for t in types]
    write_text(out / "summary.csv", csv_text(summary.rows, header))
    write_json(out / "predictions_coco.json", {
        "info": {"description": f"hemaseg predictions ({method.name})"},
        "images": coco_images, "annotations": coco_anns,
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)],
    })
    return summary
