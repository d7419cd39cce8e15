"""What every view of the station uses, at module level: the request's database connection, the station
(its worker and the types a cell may take), checks of a JSON body, and rows by id or a 404."""

from __future__ import annotations

import functools
import io
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flask import abort, current_app, g, request
from PIL import Image

from ..nuclei import NUCLEATED
from ..redcells import MORPHOLOGY_CLASSES, PLATELET, RED_CELL
from ..report import lab_counts, red_cell_summary, tally
from . import db
from .worker import Worker

MAX_NAME = 200


# adult reference ranges of the five-part count, 10^9 cells per litre (Bain, Dacie and Lewis Practical
# Haematology, 12th ed., table 2.3, rounded); a lab sets its own with `serve --reference-ranges FILE.json`
ADULT_RANGES = {"neutrophil": (2.0, 7.0), "lymphocyte": (1.0, 3.0), "monocyte": (0.2, 1.0), "eosinophil": (0.02, 0.5),
                "basophil": (0.02, 0.1)}


@dataclass(frozen=True)
class Station:
    """One app's state beside its config: ``data`` (the data folder), the background ``worker``,
    ``types``, the white-cell types a reviewer may choose (empty without a classifier), and the reference
    ``ranges`` of absolute counts (type -> (low, high), 10^9/L)."""

    data: Path
    worker: Worker
    types: tuple[str, ...]
    ranges: dict = field(default_factory=lambda: dict(ADULT_RANGES))


def read_ranges(path: Path) -> dict:
    """A lab's reference ranges from a JSON file ``{"neutrophil": [2.0, 7.5], ...}`` (10^9/L; the types of
    :data:`ADULT_RANGES`, any left out keep theirs); a bad file is refused naming it and what is wrong."""
    from ..data.io import DataError

    try:
        given = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read reference ranges ({err})") from err
    if not isinstance(given, dict):
        raise DataError(f"{path}: reference ranges must be a JSON object of type -> [low, high]")
    ranges = dict(ADULT_RANGES)
    for t, pair in given.items():
        if t not in ADULT_RANGES:
            raise DataError(f"{path}: unknown type '{t}'; reference ranges are for {', '.join(ADULT_RANGES)}")
        if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(v, (int, float)) for v in pair)
                or not 0 <= pair[0] < pair[1]):
            raise DataError(f"{path}: the range of '{t}' must be [low, high] with 0 <= low < high (10^9/L), got {pair!r}")
        ranges[t] = (float(pair[0]), float(pair[1]))
    return ranges


def absolute_counts(percent: dict[str, float], wbc: float, ranges: dict) -> list[dict]:
    """Per five-part type: its share of white cells (``percent``) as 10^9/L of a white-cell count ``wbc``
    (10^9/L), its reference range and ``flag`` L / H outside it.

    >>> absolute_counts({"neutrophil": 80.0, "lymphocyte": 10.0}, 10.0, ADULT_RANGES)[0]
    {'type': 'neutrophil', 'percent': 80.0, 'absolute': 8.0, 'low': 2.0, 'high': 7.0, 'flag': 'H'}
    """
    out = []
    for t, p in percent.items():
        n = round(p * wbc / 100, 2)
        low, high = ranges.get(t, (None, None))
        flag = "L" if low is not None and n < low else "H" if high is not None and n > high else ""
        out.append({"type": t, "percent": p, "absolute": n, "low": low, "high": high, "flag": flag})
    return out


def station() -> Station:
    return current_app.extensions["hemaseg_station"]


def con() -> sqlite3.Connection:
    """The request's database connection (closed by the app's teardown)."""
    if "con" not in g:
        g.con = db.connect(current_app.config["DB"])
    return g.con


def close(exc=None) -> None:
    c = g.pop("con", None)
    if c is not None:
        c.close()


def body() -> dict:
    """The request's JSON object, or 400."""
    d = request.get_json(silent=True)
    if not isinstance(d, dict):
        abort(400, "expected a JSON object body")
    return d


def text(d: dict, key: str) -> str:
    """``d[key]``, a non-empty text of at most :data:`MAX_NAME` characters (stripped), or 400."""
    v = d.get(key)
    if not isinstance(v, str) or not v.strip() or len(v) > MAX_NAME:
        abort(400, f"'{key}' must be a non-empty text of at most {MAX_NAME} characters")
    return v.strip()


_BY_ID = {table: f"SELECT * FROM {table} WHERE id = ?" for table in ("cases", "images", "cells", "users")}


def row_or_404(table: str, row_id: int, what: str) -> sqlite3.Row:
    """The row ``row_id`` of ``table`` (``cases``, ``images`` or ``cells``), or 404 naming ``what``."""
    row = con().execute(_BY_ID[table], (row_id,)).fetchone()
    if row is None:
        abort(404, f"no {what} {row_id}")
    return row


def case_row(case_id: int) -> sqlite3.Row:
    return row_or_404("cases", case_id, "case")


def open_case(case_id: int, what: str = "no more images can be added") -> sqlite3.Row:
    """The case, or 409 when it is signed off (``what`` says what it refuses)."""
    row = case_row(case_id)
    if row["signed_off_at"]:
        abort(409, f"case {case_id} is signed off: {what}")
    return row


def differential(case_id: int) -> dict:
    """The case's white-cell differential by :func:`hemaseg.report.tally` (as ``hemaseg report``
    counts a segment folder), with the lab's counts (:func:`hemaseg.report.lab_counts`); excluded cells
    are left out and counted per reason (``excluded``)."""
    rows = con().execute("SELECT c.type, c.excluded FROM cells c JOIN images i ON i.id = c.image_id "
                         "WHERE i.case_id = ? AND c.type IS NOT NULL ORDER BY c.id", (case_id,)).fetchall()
    d = tally(station().types, [r[0] for r in rows if r[1] is None])
    excluded = {reason: sum(r[1] == reason for r in rows) for reason in db.EXCLUSIONS}
    lab = lab_counts(d["counts"])
    details = json.loads(case_row(case_id)["details"] or "{}")
    absolute = absolute_counts(lab["five_part_percent"], details["wbc_count"], station().ranges) if details.get("wbc_count") else []
    target = int(details.get("target_count") or 100)
    return {**d, "lab": lab, "excluded": {k: n for k, n in excluded.items() if n}, "absolute": absolute,
            "target": {"count": target, "done": lab["white_cells"]}}


# red cells and platelets cut by the frame or a white cell that segment leaves out of the counts (hemaseg.redcells.counted_cells)
COUNTED = "COALESCE(json_extract(c.measurements, '$.counted'), 'True') != 'False'"
# a red cell's or platelet's count: counted by segment's convention and not excluded by a reviewer (white
# cells' exclusions concern the differential only)
RED_COUNTED = f"{COUNTED} AND (c.excluded IS NULL OR c.class NOT IN ('{RED_CELL}', '{PLATELET}'))"
MORPHOLOGY = "COALESCE(c.morphology, json_extract(c.measurements, '$.morphology'))"  # a reviewer's class, else the classifier's


def red_cells(case_id: int) -> tuple[dict | None, list[dict]]:
    """The case's red cells and platelets as ``hemaseg report`` sums a segment folder
    (:func:`hemaseg.report.red_cell_summary`: counts, ratios, diameters, morphology grades) and a row per
    field (its counts and smear hint); ``(None, [])`` when the station found none (not ``--red-cells``)."""
    fields: dict[int, dict] = {}
    for r in con().execute("SELECT i.id, i.name, i.smear, c.class, COUNT(c.id) n FROM images i JOIN cells c ON c.image_id = i.id "
                           f"WHERE i.case_id = ? AND {RED_COUNTED} GROUP BY i.id, c.class ORDER BY i.id", (case_id,)):
        f = fields.setdefault(r["id"], {"image": r["name"], "n_red_cells": 0, "n_platelets": 0, "n_white_cell": 0,
                                        **json.loads(r["smear"] or "{}")})
        key = {RED_CELL: "n_red_cells", PLATELET: "n_platelets"}.get(r["class"])
        if key:
            f[key] += r["n"]
        elif r["class"].lower() in NUCLEATED:
            f["n_white_cell"] += r["n"]
    images = list(fields.values())
    if not any(f["n_red_cells"] or f["n_platelets"] for f in images):
        return None, []
    # only what the summary reads, taken out in SQL: a case of 100 fields holds some 12,000 red cells, and the
    # case page asks every second while images are segmented
    keys = ("equivalent_diameter_um", "equivalent_diameter_px", "um_scale")
    sure = "CASE WHEN c.morphology IS NULL THEN json_extract(c.measurements, '$.morphology_confidence') ELSE 1.0 END"  # a reviewer's: sure
    red = [{k: v for k, v in zip((*keys, "morphology", "morphology_confidence"), r) if v is not None} for r in con().execute(
        "SELECT " + ", ".join(f"json_extract(c.measurements, '$.{k}')" for k in keys) + f", {MORPHOLOGY}, {sure} "
        f"FROM cells c JOIN images i ON i.id = c.image_id WHERE i.case_id = ? AND c.class = ? AND {RED_COUNTED} ORDER BY c.id",
        (case_id, RED_CELL))]
    return red_cell_summary(images, red), images


def case_dict(case_id: int) -> dict:
    """A case with its images (and their cell counts), differential, types and progress."""
    c = dict(case_row(case_id))
    images = [dict(r) for r in con().execute(
        "SELECT i.id, i.name, i.status, i.error, i.width, i.height, COUNT(c.id) cells FROM images i "
        "LEFT JOIN cells c ON c.image_id = i.id WHERE i.case_id = ? GROUP BY i.id ORDER BY i.id", (case_id,))]
    status = [i["status"] for i in images]
    red, _ = red_cells(case_id)
    c["details"] = json.loads(c["details"] or "{}")
    scales = [json.loads(r[0] or "{}").get("pixel_size_um") for r in con().execute(
        "SELECT scale FROM images WHERE case_id = ? AND status = 'done'", (case_id,))]
    scales = [s for s in scales if s]
    c["estimated_pixel_size"] = round(float(np.median(scales)), 4) if scales else None  # as segment read the images
    c.update(images=images, differential=differential(case_id), types=list(station().types), exclusions=list(db.EXCLUSIONS),
             morphologies=list(MORPHOLOGY_CLASSES),
             fields={k: {"kind": kind, "label": label} for k, (kind, label) in db.CASE_FIELDS.items()},
             red={k: v for k, v in red.items() if k != "diameters"} if red else None,
             progress={"total": len(images), "done": status.count("done"), "failed": status.count("failed"),
                       "pending": status.count("queued") + status.count("running")})
    return c


@functools.lru_cache(maxsize=4)  # a gallery asks for many crops of the same few images; stored images never change
def _decoded(path: str) -> np.ndarray:
    from ..data.contract import image_to_rgb8
    from ..data.io import read_image

    return image_to_rgb8(read_image(path))


def image_rgb(image_id: int) -> np.ndarray:
    """The stored image as ``HxWx3 uint8``: 404 if there is none, 422 if it cannot be read."""
    row = con().execute("SELECT path FROM images WHERE id = ?", (image_id,)).fetchone()
    if row is None or not row["path"]:
        abort(404, f"no image {image_id}")
    try:
        return _decoded(row["path"])
    except Exception as err:
        abort(422, f"image {image_id} cannot be read: {err}")


def cell_png(row: sqlite3.Row) -> bytes:
    """A cell's crop (its box and a margin of a sixth of its width) from its stored image, as PNG."""
    x0, y0, x1, y1 = json.loads(row["bbox"])
    rgb = image_rgb(row["image_id"])
    pad = max(4, (x1 - x0) // 6)
    h, w = rgb.shape[:2]
    return png(rgb[max(0, y0 - pad):min(h, y1 + pad), max(0, x0 - pad):min(w, x1 + pad)])


def png(arr: np.ndarray) -> bytes:
    """``HxWx3 uint8`` -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
