"""The station's JSON API (Flask blueprint ``api``, under ``/api``): cases and their images, cells and
their types, exports. The pages use it; so may scripts."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from flask import Blueprint, abort, current_app, jsonify, request, send_file
from PIL import Image

from ..data.formats import IMAGE_EXTENSIONS
from ..data.io import atomic_write
from . import db
from .context import (MAX_NAME, body, case_dict, case_row, con, differential, image_rgb, open_case, png, row_or_404,
                      station, text)

api = Blueprint("api", __name__, url_prefix="/api")


# ---------------------------------------------------------------------- cases and images
def check_image(name: str, payload: bytes) -> None:
    """Refuse (415) what is not an image by its name or its header; pixels are decoded by the worker only."""
    if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        abort(415, f"{name}: not an image type this station reads ({', '.join(IMAGE_EXTENSIONS)})")
    try:
        with Image.open(io.BytesIO(payload)) as im:
            im.size  # noqa: B018
    except Exception:
        abort(415, f"{name}: the file is not a readable image")


def add_images(case_id: int, named: list[tuple[str, bytes]]) -> list[int]:
    """Store and queue images, all or none: each is checked before any is added."""
    for name, payload in named:
        check_image(name, payload)
    folder = station().data / "cases" / str(case_id)
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for name, payload in named:
        shown = re.sub(r"[\x00-\x1f/\\]", "_", Path(name).name)[:MAX_NAME] or "image"
        image_id = con().execute("INSERT INTO images (case_id, name, path, created_at) VALUES (?, ?, '', ?)",
                                 (case_id, shown, db.now())).lastrowid
        path = folder / f"{image_id}{Path(name).suffix.lower()}"
        try:
            atomic_write(path, lambda tmp, payload=payload: tmp.write_bytes(payload))
        except BaseException:
            con().execute("DELETE FROM images WHERE id = ?", (image_id,))
            raise
        con().execute("UPDATE images SET path = ? WHERE id = ?", (str(path), image_id))
        ids.append(image_id)
    for image_id in ids:
        station().worker.enqueue(image_id)
    return ids


@api.get("/cases")
def list_cases():
    rows = con().execute("SELECT k.*, COUNT(i.id) images FROM cases k LEFT JOIN images i ON i.case_id = k.id "
                         "GROUP BY k.id ORDER BY k.id DESC").fetchall()
    return jsonify([dict(r) for r in rows])


@api.post("/cases")
def create_case():
    name = text(body(), "name")
    cur = con().execute("INSERT INTO cases (name, created_at) VALUES (?, ?)", (name, db.now()))
    return jsonify(case_dict(cur.lastrowid)), 201


@api.get("/cases/<int:case_id>")
def get_case(case_id: int):
    return jsonify(case_dict(case_id))


@api.post("/cases/<int:case_id>/images")
def upload(case_id: int):
    open_case(case_id)
    files = request.files.getlist("files")
    if not files:
        abort(400, "no files: send them as multipart form field 'files'")
    ids = add_images(case_id, [(f.filename or "image", f.read()) for f in files])
    return jsonify(ids=ids, case=case_dict(case_id)), 201


@api.post("/cases/<int:case_id>/import")
def import_folder(case_id: int):
    open_case(case_id)
    root = current_app.config["IMPORT_ROOT"]
    folder = (root / text(body(), "folder")).resolve()
    if not folder.is_relative_to(root):
        abort(400, f"the folder must lie under the import folder {root}")
    if not folder.is_dir():
        abort(400, f"no such folder under {root}: {folder.relative_to(root)}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        abort(400, f"no images in {folder.relative_to(root)}")
    ids = add_images(case_id, [(p.name, p.read_bytes()) for p in files])
    return jsonify(ids=ids, case=case_dict(case_id)), 201


@api.post("/cases/<int:case_id>/signoff")
def signoff(case_id: int):
    who = text(body(), "who")
    c = case_dict(case_id)
    if c["signed_off_at"]:
        abort(409, f"case {case_id} was already signed off by {c['signed_off_by']} at {c['signed_off_at']}")
    if c["progress"]["pending"]:
        abort(409, f"{c['progress']['pending']} image(s) are still being segmented")
    con().execute("UPDATE cases SET signed_off_by = ?, signed_off_at = ? WHERE id = ? AND signed_off_at IS NULL",
                  (who, db.now(), case_id))
    return jsonify(case_dict(case_id))


@api.get("/images/<int:image_id>")
def get_image(image_id: int):
    row = row_or_404("images", image_id, "image")
    cells = [db.cell_dict(r) for r in con().execute("SELECT * FROM cells WHERE image_id = ? ORDER BY number", (image_id,))]
    d = {k: row[k] for k in row.keys() if k != "path"}
    return jsonify({**d, "cells": cells, "types": list(station().types)})


@api.get("/images/<int:image_id>/file")
def image_file(image_id: int):
    cached = station().data / "results" / "view" / f"{image_id}.png"
    if not cached.is_file():
        payload = png(image_rgb(image_id))
        atomic_write(cached, lambda tmp: tmp.write_bytes(payload))
    return send_file(cached, mimetype="image/png", max_age=3600)


# ---------------------------------------------------------------------- cells
@api.get("/cases/<int:case_id>/cells")
def case_cells(case_id: int):
    case_row(case_id)
    rows = con().execute("SELECT c.id, c.image_id, c.number, c.class, c.type, c.predicted_type, c.type_confidence, "
                         "json_extract(c.measurements, '$.top_type') top_type, "
                         "json_extract(c.measurements, '$.second_type') second_type, "
                         "json_extract(c.measurements, '$.second_confidence') second_confidence, "
                         "i.name image FROM cells c JOIN images i ON i.id = c.image_id WHERE i.case_id = ? "
                         "ORDER BY c.image_id, c.number", (case_id,)).fetchall()
    return jsonify([dict(r) for r in rows])


@api.get("/cells/<int:cell_id>")
def get_cell(cell_id: int):
    d = db.cell_dict(row_or_404("cells", cell_id, "cell"))
    d["history"] = [dict(r) for r in con().execute("SELECT old_type, new_type, who, at FROM reclassifications "
                                                   "WHERE cell_id = ? ORDER BY id", (cell_id,))]
    return jsonify(d)


@api.get("/cells/<int:cell_id>/crop.png")
def cell_crop(cell_id: int):
    row = row_or_404("cells", cell_id, "cell")
    x0, y0, x1, y1 = json.loads(row["bbox"])
    rgb = image_rgb(row["image_id"])
    pad = max(4, (x1 - x0) // 6)
    h, w = rgb.shape[:2]
    crop = rgb[max(0, y0 - pad):min(h, y1 + pad), max(0, x0 - pad):min(w, x1 + pad)]
    return send_file(io.BytesIO(png(crop)), mimetype="image/png", max_age=3600)


@api.post("/cells/<int:cell_id>/type")
def set_type(cell_id: int):
    d = body()
    new, who = text(d, "type"), text(d, "who")
    row = row_or_404("cells", cell_id, "cell")
    types = station().types
    if row["type"] is None:
        abort(400, f"cell {cell_id} is a {row['class']}: only typed (white) cells are reclassified")
    if types and new not in types:
        abort(400, f"unknown type '{new}'; choose from {', '.join(types)}")
    try:
        result = db.reclassify(con(), cell_id, new, who, d.get("expected"), check_expected="expected" in d)
    except db.Conflict as err:
        abort(409, str(err))
    case_id = con().execute("SELECT case_id FROM images WHERE id = ?", (row["image_id"],)).fetchone()[0]
    return jsonify(result=result, cell=db.cell_dict(row_or_404("cells", cell_id, "cell")), differential=differential(case_id))


# ---------------------------------------------------------------------- exports
@api.get("/cases/<int:case_id>/export.csv")
def export_csv(case_id: int):
    from ..data.io import csv_text

    case_row(case_id)
    rows = []
    for r in con().execute("SELECT c.*, i.name image FROM cells c JOIN images i ON i.id = c.image_id "
                           "WHERE i.case_id = ? ORDER BY c.image_id, c.number", (case_id,)):
        rows.append({"image": r["image"], "cell": r["number"], "class": r["class"], "score": r["score"],
                     "type": r["type"] or "", "predicted_type": r["predicted_type"] or "",
                     "type_confidence": "" if r["type_confidence"] is None else r["type_confidence"],
                     **json.loads(r["measurements"])})
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["image", "cell", "class", "score", "type"]
    return csv_text(rows, keys), 200, {"Content-Type": "text/csv; charset=utf-8",
                                       "Content-Disposition": f'attachment; filename="case{case_id}_cells.csv"'}


@api.get("/cases/<int:case_id>/export_coco.json")
def export_coco(case_id: int):
    case_row(case_id)
    images, anns, cats = [], [], {}
    for img in con().execute("SELECT * FROM images WHERE case_id = ? AND status = 'done' ORDER BY id", (case_id,)):
        images.append({"id": img["id"], "file_name": img["name"], "width": img["width"], "height": img["height"]})
        for c in con().execute("SELECT * FROM cells WHERE image_id = ? ORDER BY number", (img["id"],)):
            cat = cats.setdefault(c["class"], len(cats) + 1)
            x0, y0, x1, y1 = json.loads(c["bbox"])
            outline = json.loads(c["outline"])
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat,
                         "segmentation": [[v for xy in poly for v in xy] for poly in outline[:1]],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": json.loads(c["measurements"]).get("area_px"),
                         "score": c["score"], "iscrowd": 0, "cell_id": c["number"],
                         "attributes": {"type": c["type"], "predicted_type": c["predicted_type"]}})
    coco = {"info": {"description": f"hemaseg review station, case {case_id}"}, "images": images, "annotations": anns,
            "categories": [{"id": i, "name": n} for n, i in cats.items()]}
    return jsonify(coco), 200, {"Content-Disposition": f'attachment; filename="case{case_id}_coco.json"'}
