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
from typing import Any
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .cells import Cells, concat_cells, encode_rle_in_box
from .classify import UNIDENTIFIED, LinearClassifier, cell_features
from .data.contract import crop_image, image_to_rgb8
from .data.io import csv_text, read_image, write_image, write_json, write_text
from .distributed import Dist
from .export import write_imagej_rois, write_qupath_geojson
from .measure import columns, measure
from .nuclei import NUCLEATED, cell_nuclei
from .errors import SettingError
from .predict import Method, SegmentConfig, image_scale, run_method, run_methods
from .redcells import (MORPHOLOGY_COLUMNS, RED_CELL, RED_COLUMNS, SMEAR_CLASSES, bundled_morphology, counted_cells, find_smear_cells,
                       red_cell_measures, red_morphology, smear_quality)
from .scale import RED_CELL_UM, ScaleEstimate
from .viz import overlay_cells


@dataclass
class SegmentSummary:
    out: Path
    rows: list[dict] = field(default_factory=list)  # one per image
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, error)
    cells: dict[str, Cells] = field(default_factory=dict)  # file -> its cells, with ``keep_cells`` only
    cell_rows: dict[str, list[dict]] = field(default_factory=dict)  # file -> its NAME_cells.csv rows, with ``keep_cells``


class _Failure(Exception):
    """A failure gathered from another process: its class name and text, as the process had them."""

    def __init__(self, kind: str, text: str):
        super().__init__(text)
        self.kind = kind


SCALE_COLUMNS = ("scale", "pixel_size_um", "scale_trusted", "red_cell_px", "resize")  # summary.csv, per image
SMEAR_COLUMNS = ("n_cut_by_frame", "platelets_per_1000_red", "white_per_1000_red", "red_coverage", "red_touching",
                 "smear_hint")  # with red cells


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
    ``cfg.batch``: the same cells whatever the batch; ``smear_cells`` only when on, so that results made
    before it existed are kept)."""
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "batch" and not (k == "smear_cells" and not v)}
    morphology = bundled_morphology() if cfg.smear_cells else None
    if morphology is not None:  # red cells' classes too
        config["morphology"] = [*morphology.classes, morphology.report.get("minutes")]
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


@dataclass(frozen=True)
class Job:
    """What every image of one :func:`segment_files` batch is segmented and written with."""

    out: Path
    method: Method
    cfg: SegmentConfig
    classifier: Any = None
    with_nuclei: bool = False
    types: tuple[str, ...] = ()  # the classifier's types and unidentified, when cells are typed
    settings: dict = field(default_factory=dict)  # what decides the results (:func:`_settings`)
    morphology: Any = None  # the red-cell morphology classifier, with red cells (:func:`hemaseg.redcells.bundled_morphology`)

    @classmethod
    def of(cls, out: Path, method: Method, cfg: SegmentConfig, classifier=None) -> Job:
        """The job of ``method`` with ``cfg``; ``cfg.smear_cells=None`` becomes on when every image's scale
        will be known (:func:`smear_cells_on`)."""
        cfg = dataclasses.replace(cfg, smear_cells=smear_cells_on(method, cfg))
        with_nuclei = cfg.nuclei != "off" and any(c.lower() in NUCLEATED for c in method.classes)
        types = (*classifier.classes, UNIDENTIFIED) if classifier is not None and with_nuclei else ()
        morphology = bundled_morphology() if cfg.smear_cells else None
        return cls(out, method, cfg, classifier, with_nuclei, types, _settings(method, cfg, classifier), morphology)

    @property
    def classes(self) -> list[str]:
        """The method's classes, then red cells and platelets when the job finds them too."""
        extra = [c for c in SMEAR_CLASSES if c not in self.method.classes] if self.cfg.smear_cells else []
        return [*self.method.classes, *extra]

    def count_column(self, cls: str) -> str:
        """summary.csv's column of the cells of class ``cls``: ``n_CLASS``; for the red cells and platelets
        the job adds, ``n_red_cells`` and ``n_platelets`` (``n_platelet`` counts the cells typed platelet).
        Red cells and platelets cut by the frame or a white cell that :func:`hemaseg.redcells.counted_cells` leaves out are
        not in them (``n_cut_by_frame``)."""
        if cls in SMEAR_CLASSES and cls not in self.method.classes:
            return f"n_{cls}s"
        return f"n_{cls}"


@dataclass
class ImageResult:
    """What :func:`write_image_results` wrote for one image, as the batch reports and the station use it."""

    row: dict  # its summary.csv row
    coco_image: dict
    annotations: list[dict]  # COCO records (ids set when the batch is written)
    cell_rows: list[dict]  # NAME_cells.csv: one row per cell, its columns in order


def write_image_results(job: Job, path: Path, name: str, image_id: int, raw, cells: Cells, scale: ScaleEstimate) -> ImageResult:
    """Measure, type and write one segmented image (``raw``: as read; ``cells``: found, nuclei added here):
    ``NAME_labels``, ``NAME_overlay.png``, ``NAME_cells.csv``, the exports, then ``NAME_result.json`` (last:
    it marks the image done)."""
    out, cfg, classes = job.out, job.cfg, job.classes
    names = [classes[i - 1] for i in cells.labels.tolist()]
    pixel_size, um_scale = measuring_scale(scale, cfg.pixel_size)
    cells.nuclei = cell_nuclei(raw, cells, names, learned=cfg.nuclei == "auto") if job.with_nuclei else None
    lab = cells.label_image()
    write_image(out / f"{name}_labels.{'png' if lab.dtype == np.uint16 else 'tif'}", lab)
    rgb = image_to_rgb8(raw)
    write_image(out / f"{name}_overlay.png", overlay_cells(rgb, cells))
    rows = measure(cells, names, pixel_size, nuclei=job.with_nuclei)
    for row in rows:
        row["um_scale"] = um_scale
    counted = counted_cells(cells, names) if cfg.smear_cells else np.ones(len(cells), bool)
    if cfg.smear_cells:
        for row, extra, c in zip(rows, red_cell_measures(rgb, cells, names), counted.tolist()):
            row.update(extra)
            row["counted"] = c  # False: a red cell or platelet cut by the frame or a white cell, left out of the counts
    if job.morphology is not None:
        for row, extra in zip(rows, red_morphology(job.morphology, rgb, cells, names, typing_pixel_size(job.method, scale, cfg))):
            row.update(extra)
    if job.types:
        type_rows(job.classifier, raw, cells, rows, typing_pixel_size(job.method, scale, cfg))
    cell_columns = (columns(pixel_size, nuclei=job.with_nuclei) + ([*RED_COLUMNS, "counted"] if cfg.smear_cells else [])
                    + (list(MORPHOLOGY_COLUMNS) if job.morphology is not None else []) + (["um_scale"] if pixel_size else [])
                    + (type_columns(job.classifier) if job.classifier else []))
    write_text(out / f"{name}_cells.csv", csv_text(rows, cell_columns))
    _write_exports(out, name, cfg.exports, cells, names, rows, lab)
    row = {"image": str(path), "name": name, "status": "ok", "error": "", "cells": len(rows), **scale_columns(scale)}
    in_count = [n for n, c in zip(names, counted.tolist()) if c]  # cells cut by the frame or a white cell: counted_cells
    for c in classes:
        row[job.count_column(c)] = in_count.count(c)
    for t in job.types:
        row[f"n_{t}"] = sum(r.get("type") == t for r in rows)
    if cfg.smear_cells:
        row.update({"n_cut_by_frame": len(names) - len(in_count), **smear_counts(in_count), **smear_quality(cells, names)})
    h, w = lab.shape
    image_info = {"id": image_id, "file_name": str(path), "height": h, "width": w}
    anns = [{"id": 0, "image_id": image_id, "category_id": int(c), "segmentation": encode_rle_in_box(m, box, h, w),
             "area": float(m.sum()),
             "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
             "score": round(float(score), 5), "iscrowd": 0, "cell_id": k + 1,
             **({"attributes": {key: rows[k][key] for key in MORPHOLOGY_COLUMNS}} if rows[k].get("morphology") else {})}
            for k, (box, m, c, score) in enumerate(zip(cells.boxes, cells.masks, cells.labels, cells.scores))]
    write_json(out / f"{name}_result.json", {"image": str(path), "settings": job.settings, "row": row,
                                              "coco_image": image_info, "annotations": anns})
    return ImageResult(row, image_info, anns, [{k: r.get(k) for k in cell_columns} for r in rows])


def _write_exports(out: Path, name: str, exports, cells: Cells, names: list[str], rows: list[dict], lab: np.ndarray) -> None:
    """The files of ``--export`` for one image (``lab``: its label image)."""
    if "imagej" in exports:
        write_imagej_rois(out / f"{name}_rois.zip", cells, names)
    if "qupath" in exports:
        write_qupath_geojson(out / f"{name}.geojson", cells, names, rows)
    if "tiff" in exports and lab.dtype == np.uint16:  # (beyond 65535 cells the labels are TIFF already)
        write_image(out / f"{name}_labels.tif", lab)


def _failed_row(path: Path, name: str, err: Exception) -> dict:
    """The summary row of an image that could not be read or segmented: one bad file never stops the batch."""
    return {"image": str(path), "name": name, "status": "failed", "error": str(err), "cells": 0}


def _said(log: Callable[[str], None], path: Path, err: Exception) -> Exception:
    """``err`` of the image ``path``, logged once (its message usually names the file already)."""
    log(f"failed: {err}" if str(err).startswith(str(path)) else f"failed: {path}: {err}")
    return err


def smear_cells_on(method: Method, cfg: SegmentConfig) -> bool:
    """Whether red cells and platelets are found: ``cfg.smear_cells`` when given, else when every image's
    scale is known - the method has one (the bundled model: its estimate) or ``--pixel-size`` gives it - and
    the method does not find red cells itself (a model trained with a ``red_cell`` class).

    >>> m = Method(); smear_cells_on(m, SegmentConfig()), smear_cells_on(m, SegmentConfig(pixel_size=0.1))
    (False, True)
    >>> m.pixel_size = 0.16; smear_cells_on(m, SegmentConfig()), smear_cells_on(m, SegmentConfig(smear_cells=False))
    (True, False)
    """
    if cfg.smear_cells is not None:
        return cfg.smear_cells
    return (method.pixel_size is not None or cfg.pixel_size is not None) and RED_CELL not in method.classes


def with_smear_cells(job: Job, raw, cells: Cells, scale: ScaleEstimate) -> Cells:
    """``cells`` (the method's) and the image's red cells and platelets (:func:`hemaseg.redcells.find_smear_cells`,
    at the pixel size the image is seen at: :func:`typing_pixel_size`; white cells left out)."""
    px = typing_pixel_size(job.method, scale, job.cfg)
    if px is None:
        raise SettingError("red cells and platelets need the image's scale: give --pixel-size (this method has no scale model)")
    found = find_smear_cells(image_to_rgb8(raw), RED_CELL_UM / px, exclude=cells.union(), classes=tuple(job.classes))
    return concat_cells([cells, found])


def smear_counts(names: list[str]) -> dict:
    """A field's counts against its red cells: platelets and white (nucleated) cells per 1000 red cells
    (empty without red cells).

    >>> smear_counts(["red_cell"] * 400 + ["platelet"] * 10 + ["white_cell"])
    {'platelets_per_1000_red': 25.0, 'white_per_1000_red': 2.5}
    """
    red = names.count("red_cell")
    white = sum(n.lower() in NUCLEATED for n in names)
    per = lambda n: round(1000 * n / red, 2) if red else None  # noqa: E731
    return {"platelets_per_1000_red": per(names.count("platelet")), "white_per_1000_red": per(white)}


def _find(method: Method, raws: list, cfg: SegmentConfig, scales: list[ScaleEstimate]) -> list:
    """The cells of each image (read together, :func:`run_methods`), or the exception of an image that
    failed: when the batch fails, each image is segmented on its own to tell which."""
    try:
        return run_methods(method, raws, cfg, [sc.resize for sc in scales])
    except Exception:
        found = []
        for raw, sc in zip(raws, scales):
            try:
                found.append(run_method(method, raw, cfg, sc.resize))
            except Exception as err:
                found.append(err)
        return found


def _listed(summary: SegmentSummary, files: list[Path], names: list[str], done: dict, failures: dict) -> SegmentSummary:
    """``summary`` with a row per image done (``done[index][0]``) or failed (``failures[index]``), in file order."""
    for index in sorted(done.keys() | failures.keys()):
        if index in done:
            summary.rows.append(done[index][0])
            continue
        err = failures[index]
        summary.rows.append(_failed_row(files[index], names[index], err))
        summary.failed.append((str(files[index]), f"{getattr(err, 'kind', type(err).__name__)}: {err}"))
    return summary


def _write_batch_reports(job: Job, rows: list[dict], coco_images: list[dict], coco_anns: list[dict]) -> None:
    """``summary.csv`` and ``predictions_coco.json`` of the batch: its images, in the order given."""
    classes = job.classes
    for k, ann in enumerate(coco_anns, start=1):
        ann["id"] = k
    header = (["image", "name", "status", "error", "cells", *SCALE_COLUMNS] + [job.count_column(c) for c in classes] + [f"n_{t}" for t in job.types]
              + (list(SMEAR_COLUMNS) if job.cfg.smear_cells else []))
    write_text(job.out / "summary.csv", csv_text(rows, header))
    write_json(job.out / "predictions_coco.json", {
        "info": {"description": f"hemaseg predictions ({job.method.name})"},
        "images": coco_images, "annotations": coco_anns,
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)],
    })


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

    ``keep_cells`` keeps each file's :class:`~hemaseg.cells.Cells` (nuclei included) and its per-cell rows
    in the summary, e.g. to score them against a truth (``evaluate_method(..., predictions=)``) or to store
    them (the review station) without segmenting or reading twice (it segments every file again, as
    ``overwrite``).

    Steps, per batch of ``cfg.batch`` images: results already in ``out`` with the same settings are kept
    (:func:`_done`), the others read, their scale found (:func:`~hemaseg.predict.image_scale`), segmented
    together (:func:`_find`) and written (:func:`write_image_results`); then the batch reports
    (:func:`_write_batch_reports`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = SegmentSummary(out)
    job = Job.of(out, method, cfg, classifier)
    taken: set[str] = set()
    names_all = [_unique_name(p.stem, taken) for p in files]  # the same on every process
    mine = list(range(len(files)) if group is None else range(group.rank, len(files), group.world))
    done: dict[int, tuple[dict, dict, list[dict]]] = {}  # index -> (summary row, COCO image, its annotations)
    failures: dict[int, Exception] = {}
    bar = tqdm(total=len(mine), desc=f"segment ({method.name})", disable=not progress)
    reused = 0
    for start in range(0, len(mine), cfg.batch):  # cfg.batch images read, then segmented together
        todo = []
        for index in mine[start : start + cfg.batch]:
            path, name, image_id = files[index], names_all[index], index + 1
            kept = None if (overwrite or keep_cells) else _done(out / f"{name}_result.json", path, job.settings)
            if kept is not None:
                done[index] = ({**kept["row"], "name": name}, {**kept["coco_image"], "id": image_id},
                               [{**a, "image_id": image_id} for a in kept["annotations"]])
                reused += 1
                continue
            try:
                todo.append((index, read_image(path)))
            except Exception as err:
                failures[index] = _said(log, path, err)
        scales = [image_scale(method, raw, cfg) for _, raw in todo]
        for (index, _), sc in zip(todo, scales):
            if sc.source != "none" or method.scale_net is not None:
                log(f"{files[index].name}: scale {sc.describe()}" + (f", seen x{sc.resize:.3f}" if sc.resize != 1 else ""))
        for (index, raw), cells, sc in zip(todo, _find(method, [raw for _, raw in todo], cfg, scales), scales):
            if isinstance(cells, Exception):
                failures[index] = _said(log, files[index], cells)
                continue
            if job.cfg.smear_cells:
                try:
                    cells = with_smear_cells(job, raw, cells, sc)
                except SettingError as err:
                    failures[index] = _said(log, files[index], err)
                    continue
            result = write_image_results(job, files[index], names_all[index], index + 1, raw, cells, sc)
            done[index] = (result.row, result.coco_image, result.annotations)
            if keep_cells:
                summary.cells[str(files[index])], summary.cell_rows[str(files[index])] = cells, result.cell_rows
        bar.update(len(mine[start : start + cfg.batch]))
    bar.close()
    if reused:
        log(f"{reused} image(s) already segmented in {out} with these settings: kept (--overwrite to redo them)")
    if group is not None:  # process 0 gathers every process's share
        shares = group.gather((done, {i: (type(e).__name__, str(e)) for i, e in failures.items()}))
        if not group.main:
            return _listed(summary, files, names_all, done, failures)  # its own share
        done = {i: d for share in shares for i, d in share[0].items()}
        failures = {i: _Failure(*e) for share in shares for i, e in share[1].items()}
    _listed(summary, files, names_all, done, failures)
    _write_batch_reports(job, summary.rows, [done[i][1] for i in sorted(done)],
                         [a for i in sorted(done) for a in sorted(done[i][2], key=lambda a: a["cell_id"])])
    return summary
