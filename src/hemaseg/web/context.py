"""What every view of the station uses, at module level: the request's database connection, the station
(its worker and the types a cell may take), checks of a JSON body, and rows by id or a 404."""

from __future__ import annotations

import functools
import io
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flask import abort, current_app, g, request
from PIL import Image

from ..nuclei import NUCLEATED
from ..redcells import PLATELET, RED_CELL
from ..report import lab_counts, red_cell_summary, tally
from . import db
from .worker import Worker

MAX_NAME = 200


@dataclass(frozen=True)
class Station:
    """One app's state beside its config: ``data`` (the data folder), the background ``worker``, and
    ``types``, the white-cell types a reviewer may choose (empty without a classifier)."""

    data: Path
    worker: Worker
    types: tuple[str, ...]


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


_BY_ID = {table: f"SELECT * FROM {table} WHERE id = ?" for table in ("cases", "images", "cells")}


def row_or_404(table: str, row_id: int, what: str) -> sqlite3.Row:
    """The row ``row_id`` of ``table`` (``cases``, ``images`` or ``cells``), or 404 naming ``what``."""
    row = con().execute(_BY_ID[table], (row_id,)).fetchone()
    if row is None:
        abort(404, f"no {what} {row_id}")
    return row


def case_row(case_id: int) -> sqlite3.Row:
    return row_or_404("cases", case_id, "case")


def open_case(case_id: int) -> sqlite3.Row:
    """The case, or 409 when it is signed off (no more images)."""
    row = case_row(case_id)
    if row["signed_off_at"]:
        abort(409, f"case {case_id} is signed off: no more images can be added")
    return row


def differential(case_id: int) -> dict:
    """The case's white-cell differential by :func:`hemaseg.report.tally` (as ``hemaseg report``
    counts a segment folder), with the lab's counts (:func:`hemaseg.report.lab_counts`); excluded cells
    are left out and counted per reason (``excluded``)."""
    rows = con().execute("SELECT c.type, c.excluded FROM cells c JOIN images i ON i.id = c.image_id "
                         "WHERE i.case_id = ? AND c.type IS NOT NULL ORDER BY c.id", (case_id,)).fetchall()
    d = tally(station().types, [r[0] for r in rows if r[1] is None])
    excluded = {reason: sum(r[1] == reason for r in rows) for reason in db.EXCLUSIONS}
    return {**d, "lab": lab_counts(d["counts"]), "excluded": {k: n for k, n in excluded.items() if n}}


def red_cells(case_id: int) -> tuple[dict | None, list[dict]]:
    """The case's red cells and platelets as ``hemaseg report`` sums a segment folder
    (:func:`hemaseg.report.red_cell_summary`: counts, ratios, diameters, morphology grades) and a row per
    field (its counts and smear hint); ``(None, [])`` when the station found none (not ``--red-cells``)."""
    fields: dict[int, dict] = {}
    for r in con().execute("SELECT i.id, i.name, i.smear, c.class, COUNT(c.id) n FROM images i JOIN cells c ON c.image_id = i.id "
                           "WHERE i.case_id = ? GROUP BY i.id, c.class ORDER BY i.id", (case_id,)):
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
    red = [json.loads(r[0]) for r in con().execute("SELECT c.measurements FROM cells c JOIN images i ON i.id = c.image_id "
                                                   "WHERE i.case_id = ? AND c.class = ? ORDER BY c.id", (case_id, RED_CELL))]
    return red_cell_summary(images, red), images


def case_dict(case_id: int) -> dict:
    """A case with its images (and their cell counts), differential, types and progress."""
    c = dict(case_row(case_id))
    images = [dict(r) for r in con().execute(
        "SELECT i.id, i.name, i.status, i.error, i.width, i.height, COUNT(c.id) cells FROM images i "
        "LEFT JOIN cells c ON c.image_id = i.id WHERE i.case_id = ? GROUP BY i.id ORDER BY i.id", (case_id,))]
    status = [i["status"] for i in images]
    red, _ = red_cells(case_id)
    c.update(images=images, differential=differential(case_id), types=list(station().types), exclusions=list(db.EXCLUSIONS),
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


def png(arr: np.ndarray) -> bytes:
    """``HxWx3 uint8`` -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
