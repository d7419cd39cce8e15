"""Background segmentation for the review station: one worker thread, one image at a time.

An image is decoded only here (bounded: one at a time, refused above ``max_pixels``), segmented with
:func:`hemaseg.segment.segment_files` (so its files - label image, overlay, per-cell CSV with types,
COCO record - are the same as ``hemaseg segment`` writes, in ``cases/CASE/results/IMAGE/``), and its
cells are stored in the database with their outlines as polygons for the viewer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.measure import approximate_polygon, find_contours

from ..predict import Method, SegmentConfig
from ..segment import SCALE_COLUMNS, SMEAR_COLUMNS, segment_files
from . import db

log = logging.getLogger(__name__)
MAX_PIXELS = 64_000_000  # an image larger than this (e.g. 8000x8000) is refused by the review station


def polygons(mask: np.ndarray, x0: int, y0: int, tolerance: float = 0.7) -> list[list[list[float]]]:
    """Outlines of a binary ``HW`` mask lying at ``(x0, y0)`` in the image, as polygons of ``[x, y]``
    pixel-edge coordinates (largest first), simplified to within ``tolerance`` px.

    >>> m = np.zeros((4, 4), bool); m[1:3, 1:3] = True  # pixels x 11-12, y 21-22 of the image
    >>> p = np.array(polygons(m, 10, 20)[0]); [float(v) for v in (p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max())]
    [11.0, 13.0, 21.0, 23.0]
    """
    contours = find_contours(np.pad(mask.astype(np.uint8), 1), 0.5)
    out = []
    for c in sorted(contours, key=len, reverse=True):
        c = approximate_polygon(c, tolerance)
        out.append([[round(float(x) + x0 - 0.5, 1), round(float(y) + y0 - 0.5, 1)] for y, x in c])
    return out


def outline_mask(outlines: list[list[list[float]]]) -> tuple[np.ndarray, int, int]:
    """The pixels inside polygons of ``[x, y]`` pixel-edge coordinates (as :func:`polygons` writes them),
    as ``(HW bool mask, x0, y0)`` of their bounding box; the inverse of :func:`polygons` up to its tolerance.

    >>> m, x0, y0 = outline_mask([[[11.0, 21.0], [13.0, 21.0], [13.0, 23.0], [11.0, 23.0]]])
    >>> int(m.sum()), (x0, y0)
    (4, (11, 21))
    """
    from skimage.draw import polygon as fill

    pts = np.concatenate([np.asarray(p, float) for p in outlines if len(p) >= 3])
    x0, y0 = int(np.floor(pts[:, 0].min())), int(np.floor(pts[:, 1].min()))
    w, h = int(np.ceil(pts[:, 0].max())) - x0, int(np.ceil(pts[:, 1].max())) - y0
    mask = np.zeros((h, w), bool)
    for p in outlines:
        if len(p) >= 3:
            p = np.asarray(p, float)
            rr, cc = fill(p[:, 1] - y0 - 0.5, p[:, 0] - x0 - 0.5, mask.shape)  # pixel centres inside the outline
            mask[rr, cc] = True
    return mask, x0, y0


def _number(text: str) -> int | float | str:
    """A CSV field as the number it writes, else as it is."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def as_written(row: dict) -> dict[str, str]:
    """A per-cell row as ``NAME_cells.csv`` writes it (``None`` empty, NumPy scalars as their text), so the
    station stores and exports the very values of segment's CSV, not more digits of a float32.

    >>> as_written({"id": 1, "area_um2": np.float32(0.1), "type": None})
    {'id': '1', 'area_um2': '0.1', 'type': ''}
    """
    return {k: "" if v is None else str(v) for k, v in row.items()}


@dataclass
class Segmenter:
    """What the worker segments with: a method (the bundled model by default), its settings and the
    white-cell type classifier (or None)."""

    method: Method
    cfg: SegmentConfig = SegmentConfig()
    classifier: object | None = None


def case_config(con, case_id: int, cfg: SegmentConfig) -> SegmentConfig:
    """The settings an image of case ``case_id`` is segmented with: ``cfg``, at the case's µm per pixel
    when the lab entered one (its sample field ``pixel_size_um``: the image's sizes in µm then come from it,
    as with ``segment --pixel-size``, not from the scale read off the image)."""
    row = con.execute("SELECT details FROM cases WHERE id = ?", (case_id,)).fetchone()
    given = json.loads(row[0] or "{}").get("pixel_size_um") if row is not None else None
    return dataclasses.replace(cfg, pixel_size=float(given)) if given and cfg.pixel_size is None else cfg


class Worker:
    """Segments queued images of the database at ``db_path`` in a daemon thread; ``enqueue(image_id)``."""

    def __init__(self, db_path: Path, results: Path, segmenter: Segmenter, max_pixels: int = MAX_PIXELS):
        self.db_path, self.results, self.segmenter, self.max_pixels = db_path, results, segmenter, max_pixels
        self.queue: queue.Queue[int] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="hemaseg-segment", daemon=True)
        self.thread.start()

    def enqueue(self, image_id: int) -> None:
        self.queue.put(image_id)

    def resume(self) -> int:
        """Queue again the images a stopped server left queued or running; returns how many."""
        con = db.connect(self.db_path)
        ids = [r[0] for r in con.execute("SELECT id FROM images WHERE status IN ('queued', 'running') ORDER BY id")]
        con.close()
        for i in ids:
            self.enqueue(i)
        return len(ids)

    def idle(self) -> bool:
        return self.queue.unfinished_tasks == 0

    def _run(self) -> None:
        con = db.connect(self.db_path)
        while True:
            image_id = self.queue.get()
            try:
                self._segment(con, image_id)
            except Exception as err:  # never let one image stop the worker
                log.exception("segmentation of image %s failed", image_id)
                con.execute("UPDATE images SET status = 'failed', error = ? WHERE id = ?",
                            (f"{err.__class__.__name__}: {err}", image_id))
            finally:
                self.queue.task_done()

    def _segment(self, con, image_id: int) -> None:
        row = con.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None or row["status"] == "done":
            return
        con.execute("UPDATE images SET status = 'running', error = '' WHERE id = ?", (image_id,))
        path = Path(row["path"])
        try:
            with Image.open(path) as im:  # the header only: size before decoding
                w, h = im.size
        except Exception as err:
            raise ValueError(f"{row['name']}: not a readable image ({err})") from err
        if w * h > self.max_pixels:
            raise ValueError(f"{row['name']}: {w}x{h} px is more than this station's limit of {self.max_pixels:,} px; "
                             "segment it with `hemaseg segment` (tiled)")
        out = self.results / str(row["case_id"]) / str(image_id)
        s = self.segmenter
        summary = segment_files([path], s.method, out, case_config(con, row["case_id"], s.cfg), progress=False, log=lambda m: None,
                                classifier=s.classifier, keep_cells=True)
        if summary.failed:
            raise ValueError(summary.failed[0][1])
        cells = summary.cells[str(path)]
        rows = [as_written(r) for r in summary.cell_rows[str(path)]]
        records = []
        for k, (row_k, box, mask) in enumerate(zip(rows, cells.boxes, cells.masks)):
            x0, y0 = int(box[0]), int(box[1])
            nucleus = cells.nuclei[k] if cells.nuclei is not None else None
            kind = row_k.get("type") or None
            conf = float(row_k["type_confidence"]) if row_k.get("type_confidence") else None
            measurements = {key: _number(v) for key, v in row_k.items()
                            if key not in ("id", "class", "score", "type", "type_confidence") and v != ""}
            records.append((image_id, int(row_k["id"]), row_k["class"], float(row_k["score"]), kind, conf, kind,
                            json.dumps([int(v) for v in box]), json.dumps(polygons(mask, x0, y0)),
                            json.dumps(polygons(nucleus, x0, y0) if nucleus is not None and nucleus.any() else []),
                            json.dumps(measurements)))
        with db.transaction(con):
            con.execute("DELETE FROM cells WHERE image_id = ?", (image_id,))
            con.executemany("INSERT INTO cells (image_id, number, class, score, predicted_type, type_confidence, type, bbox, "
                            "outline, nucleus, measurements) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
            scale = {k: summary.rows[0].get(k) for k in SCALE_COLUMNS}
            smear = {k: summary.rows[0][k] for k in SMEAR_COLUMNS if k in summary.rows[0]}
            con.execute("UPDATE images SET status = 'done', width = ?, height = ?, scale = ?, smear = ? WHERE id = ?",
                        (w, h, json.dumps(scale), json.dumps(smear), image_id))
