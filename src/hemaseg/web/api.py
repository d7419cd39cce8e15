"""The station's JSON API (Flask blueprint ``api``, under ``/api``): cases and their images, cells and
their types, exports. The pages use it; so may scripts."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
from flask import Blueprint, abort, current_app, jsonify, request, send_file
from PIL import Image

from ..data.formats import IMAGE_EXTENSIONS
from ..data.io import atomic_write
from ..errors import SettingError
from ..model import check_pixel_size
from . import db
from .auth import requires, user_name
from ..redcells import MORPHOLOGY_CLASSES, PLATELET, RED_CELL
from .context import (COUNTED, MAX_NAME, MORPHOLOGY, body, case_dict, case_row, cell_png, con, differential, image_rgb, open_case, png,
                      red_cells, row_or_404, station, text)

api = Blueprint("api", __name__, url_prefix="/api")


# ---------------------------------------------------------------------- cases and images
def image_problem(name: str, payload: bytes, max_pixels: int) -> tuple[int, str] | None:
    """Why an uploaded file is refused, as ``(HTTP status, reason naming the file)``, or None: not an image
    by its name or its header (415), or more pixels than the station segments (413). Only the header is
    read here; pixels are decoded by the worker."""
    if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        return 415, f"{name}: not an image type this station reads ({', '.join(IMAGE_EXTENSIONS)})"
    try:
        with Image.open(io.BytesIO(payload)) as im:
            w, h = im.size
    except Exception:
        return 415, f"{name}: the file is not a readable image"
    if w * h > max_pixels:
        return 413, (f"{name}: {w}x{h} px is more than this station segments ({max_pixels:,} px); "
                     "split it into fields, or ask the station's admin to start it with a larger --max-pixels")
    return None


def add_images(case_id: int, named: list[tuple[str, bytes]]) -> tuple[list[int], list[dict]]:
    """Store and queue each image that passes :func:`image_problem` and is not already in the case (by its
    SHA-256); returns the new image ids and the refused files (``name``, ``reason``, ``status``), each
    judged on its own."""
    folder = station().data / "cases" / str(case_id)
    folder.mkdir(parents=True, exist_ok=True)
    known = {r["sha256"]: r["name"] for r in con().execute("SELECT sha256, name FROM images WHERE case_id = ? AND sha256 != ''",
                                                           (case_id,))}
    ids, refused = [], []
    for name, payload in named:
        problem = image_problem(name, payload, station().worker.max_pixels)
        digest = hashlib.sha256(payload).hexdigest()
        if problem is None and digest in known:
            problem = 409, f"{name}: already in this case (as {known[digest]})"
        if problem is not None:
            refused.append({"name": name, "status": problem[0], "reason": problem[1]})
            continue
        shown = re.sub(r"[\x00-\x1f/\\]", "_", Path(name).name)[:MAX_NAME] or "image"
        known[digest] = shown
        image_id = con().execute("INSERT INTO images (case_id, name, path, created_at, sha256) VALUES (?, ?, '', ?, ?)",
                                 (case_id, shown, db.now(), digest)).lastrowid
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
    return ids, refused


def added(case_id: int, named: list[tuple[str, bytes]]):
    """The response to images sent to a case (:func:`add_images`): 201 with the ids and the refused files
    when any was added, else the first refusal's status naming every refused file."""
    ids, refused = add_images(case_id, named)
    if not ids:
        abort(refused[0]["status"], "; ".join(r["reason"] for r in refused))
    return jsonify(ids=ids, refused=refused, case=case_dict(case_id)), 201


@api.get("/cases")
def list_cases():
    """The cases, newest first; archived ones only with ``?archived=1``."""
    archived = request.args.get("archived") == "1"
    rows = con().execute("SELECT k.*, COUNT(i.id) images FROM cases k LEFT JOIN images i ON i.case_id = k.id "
                         f"{'' if archived else 'WHERE k.archived_at IS NULL '}GROUP BY k.id ORDER BY k.id DESC").fetchall()
    return jsonify([dict(r) for r in rows])


@api.post("/cases")
def create_case():
    """A new case; a name some case already has (letter case aside) is refused (409) unless the body says
    ``duplicate: true`` - the page asks first, so that one sample does not become two cases by mistake."""
    d = body()
    name = text(d, "name")
    same = con().execute("SELECT id, created_at FROM cases WHERE lower(name) = lower(?) ORDER BY id", (name,)).fetchone()
    if same is not None and d.get("duplicate") is not True:
        abort(409, f"a case named '{name}' already exists (case {same['id']}, created {same['created_at']} UTC); "
                   "create another anyway?")
    cur = con().execute("INSERT INTO cases (name, created_at) VALUES (?, ?)", (name, db.now()))
    return jsonify(case_dict(cur.lastrowid)), 201


@api.post("/cases/<int:case_id>/details")
def set_details(case_id: int):
    """Set the case's sample fields (``db.CASE_FIELDS``; null clears one) and its ``comment``; not once
    signed off."""
    d = body()
    case = open_case(case_id, "its details cannot change")
    details = json.loads(case["details"] or "{}")
    for key, value in d.items():
        if key == "comment":
            continue
        if key not in db.CASE_FIELDS:
            abort(400, f"unknown field '{key}'; choose from {', '.join(db.CASE_FIELDS)} or comment")
        kind = db.CASE_FIELDS[key][0]
        if value is None or value == "":
            details.pop(key, None)
        elif kind == "text" and isinstance(value, str) and len(value) <= MAX_NAME:
            details[key] = value.strip()
        elif kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e6:
            details[key] = value
        else:
            abort(400, f"'{key}' must be {'a text of at most 200 characters' if kind == 'text' else 'a positive number'}")
    if "target_count" in details and details["target_count"] != int(details["target_count"]):
        abort(400, "'target_count' must be a whole number of cells")
    try:  # images added from now on are segmented at it (worker.case_config)
        check_pixel_size(details.get("pixel_size_um"), "'pixel_size_um'")
    except SettingError as err:
        abort(400, str(err))
    comment = d.get("comment", case["comment"])
    if not isinstance(comment, str) or len(comment) > 5000:
        abort(400, "'comment' must be a text of at most 5000 characters")
    con().execute("UPDATE cases SET details = ?, comment = ? WHERE id = ?", (json.dumps(details), comment.strip(), case_id))
    return jsonify(case_dict(case_id))


@api.post("/cells/<int:cell_id>/comment")
def set_comment(cell_id: int):
    """A reviewer's comment on a cell (empty removes it), kept in its history (kind ``comment``)."""
    d = body()
    who = user_name()
    comment = d.get("comment")
    if not isinstance(comment, str) or len(comment) > 2000:
        abort(400, "'comment' must be a text of at most 2000 characters")
    row = row_or_404("cells", cell_id, "cell")
    image = row_or_404("images", row["image_id"], "image")
    open_case(image["case_id"], "its cells cannot change")
    if comment.strip() != row["comment"]:
        con().execute("UPDATE cells SET comment = ? WHERE id = ?", (comment.strip(), cell_id))
        con().execute("INSERT INTO reclassifications (cell_id, old_type, new_type, who, at, kind) VALUES (?, ?, ?, ?, ?, 'comment')",
                      (cell_id, row["comment"], comment.strip(), who, db.now()))
    return jsonify(db.cell_dict(row_or_404("cells", cell_id, "cell")))


@api.post("/cases/<int:case_id>/archive")
def archive(case_id: int):
    """Archive (``archived: true``) or bring back (``false``) a case: archived cases leave the list of cases,
    nothing else changes."""
    d = body()
    if not isinstance(d.get("archived"), bool):
        abort(400, "'archived' must be true or false")
    case_row(case_id)
    con().execute("UPDATE cases SET archived_at = ? WHERE id = ?", (db.now() if d["archived"] else None, case_id))
    return jsonify(case_dict(case_id))


@api.get("/cases/<int:case_id>")
def get_case(case_id: int):
    return jsonify(case_dict(case_id))


@api.post("/cases/<int:case_id>/images")
def upload(case_id: int):
    open_case(case_id)
    files = request.files.getlist("files")
    if not files:
        abort(400, "no files: send them as multipart form field 'files'")
    return added(case_id, [(f.filename or "image", f.read()) for f in files])


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
    return added(case_id, [(p.name, p.read_bytes()) for p in files])


@api.post("/cases/<int:case_id>/signoff")
@requires("supervisor")
def signoff(case_id: int):
    """Sign the case off under the logged-in supervisor's name: nothing in it changes afterwards, unless a
    supervisor reopens it with a reason."""
    who = user_name()
    c = case_dict(case_id)
    if c["signed_off_at"]:
        abort(409, f"case {case_id} was already signed off by {c['signed_off_by']} at {c['signed_off_at']}")
    if c["progress"]["pending"]:
        abort(409, f"{c['progress']['pending']} image(s) are still being segmented")
    failed = [i["name"] for i in c["images"] if i["status"] == "failed"]
    if failed:
        abort(409, f"{len(failed)} image(s) failed ({', '.join(failed)}): retry or delete them before signing off")
    con().execute("UPDATE cases SET signed_off_by = ?, signed_off_at = ? WHERE id = ? AND signed_off_at IS NULL",
                  (who, db.now(), case_id))
    return jsonify(case_dict(case_id))


@api.post("/cases/<int:case_id>/reopen")
@requires("supervisor")
def reopen(case_id: int):
    """Reopen a signed-off case, with a ``reason`` (kept, with the sign-off it undoes, in ``reopenings``)."""
    reason = text(body(), "reason")
    c = case_row(case_id)
    if not c["signed_off_at"]:
        abort(409, f"case {case_id} is not signed off")
    con().execute("INSERT INTO reopenings (case_id, signed_off_by, signed_off_at, reason, who, at) VALUES (?, ?, ?, ?, ?, ?)",
                  (case_id, c["signed_off_by"], c["signed_off_at"], reason, user_name(), db.now()))
    con().execute("UPDATE cases SET signed_off_by = NULL, signed_off_at = NULL WHERE id = ?", (case_id,))
    return jsonify(case_dict(case_id))


def changeable_image(image_id: int):
    """The image, or 404; 409 when its case is signed off or it is being segmented."""
    row = row_or_404("images", image_id, "image")
    if case_row(row["case_id"])["signed_off_at"]:
        abort(409, f"case {row['case_id']} is signed off: its images cannot change")
    if row["status"] == "running":
        abort(409, f"{row['name']} is being segmented; wait for it to finish")
    return row


@api.delete("/images/<int:image_id>")
def delete_image(image_id: int):
    """Remove an image, its cells and results (a wrong or failed upload) from its case."""
    row = changeable_image(image_id)
    con().execute("DELETE FROM images WHERE id = ?", (image_id,))  # its cells and their history cascade
    if row["path"]:  # (an upload cut short before its file was written has none)
        Path(row["path"]).unlink(missing_ok=True)
    shutil.rmtree(station().worker.results / str(row["case_id"]) / str(image_id), ignore_errors=True)
    return jsonify(case_dict(row["case_id"]))


@api.post("/images/<int:image_id>/retry")
def retry_image(image_id: int):
    """Segment a failed image again."""
    row = changeable_image(image_id)
    if row["status"] != "failed":
        abort(409, f"{row['name']} has not failed (it is {row['status']})")
    con().execute("UPDATE images SET status = 'queued', error = '' WHERE id = ?", (image_id,))
    station().worker.enqueue(image_id)
    return jsonify(case_dict(row["case_id"]))


@api.get("/images/<int:image_id>")
def get_image(image_id: int):
    row = row_or_404("images", image_id, "image")
    cells = [db.cell_dict(r) for r in con().execute("SELECT * FROM cells WHERE image_id = ? ORDER BY number", (image_id,))]
    d = {k: row[k] for k in row.keys() if k != "path"}
    return jsonify({**d, "cells": cells, "types": list(station().types), "exclusions": list(db.EXCLUSIONS),
                    "morphologies": list(MORPHOLOGY_CLASSES)})


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
    """The case's cells (``?typed=1``: the typed white cells only, as the gallery shows them - a field holds
    hundreds of red cells; ``?morphology=CLASS``: the red cells of that class, as the reviewer or else the
    classifier called them, counted by the frame rule, excluded ones too, least sure first)."""
    case_row(case_id)
    morphology = request.args.get("morphology")
    if morphology is not None:
        rows = con().execute("SELECT c.id, c.image_id, c.number, c.class, c.excluded, c.morphology reviewed, "
                             f"{MORPHOLOGY} morphology, json_extract(c.measurements, '$.morphology') predicted_morphology, "
                             "json_extract(c.measurements, '$.morphology_confidence') morphology_confidence, i.name image "
                             f"FROM cells c JOIN images i ON i.id = c.image_id WHERE i.case_id = ? AND c.class = ? AND {COUNTED} "
                             f"AND {MORPHOLOGY} = ? ORDER BY morphology_confidence, c.id", (case_id, RED_CELL, morphology)).fetchall()
        return jsonify([dict(r) for r in rows])
    typed = "AND c.type IS NOT NULL " if request.args.get("typed") == "1" else ""
    rows = con().execute("SELECT c.id, c.image_id, c.number, c.class, c.type, c.excluded, c.predicted_type, c.type_confidence, "
                         "json_extract(c.measurements, '$.top_type') top_type, "
                         "json_extract(c.measurements, '$.second_type') second_type, "
                         "json_extract(c.measurements, '$.second_confidence') second_confidence, "
                         f"i.name image FROM cells c JOIN images i ON i.id = c.image_id WHERE i.case_id = ? {typed}"
                         "ORDER BY c.image_id, c.number", (case_id,)).fetchall()
    return jsonify([dict(r) for r in rows])


@api.get("/cells/<int:cell_id>")
def get_cell(cell_id: int):
    d = db.cell_dict(row_or_404("cells", cell_id, "cell"))
    d["history"] = [dict(r) for r in con().execute("SELECT kind, old_type, new_type, who, at FROM reclassifications "
                                                   "WHERE cell_id = ? ORDER BY id", (cell_id,))]
    return jsonify(d)


@api.get("/cells/<int:cell_id>/crop.png")
def cell_crop(cell_id: int):
    return send_file(io.BytesIO(cell_png(row_or_404("cells", cell_id, "cell"))), mimetype="image/png", max_age=3600)


@api.post("/cells/<int:cell_id>/type")
def set_type(cell_id: int):
    d = body()
    new, who = text(d, "type"), user_name()
    row = row_or_404("cells", cell_id, "cell")
    types = station().types
    if row["type"] is None:
        abort(400, f"cell {cell_id} is a {row['class']}: only typed (white) cells are reclassified")
    if types and new not in types:
        abort(400, f"unknown type '{new}'; choose from {', '.join(types)}")
    if "expected" not in d:
        abort(400, "'expected' (the type the reviewer saw) is required, so that a change made meanwhile in another "
                   "tab is not overwritten unseen")
    try:
        result = db.reclassify(con(), cell_id, new, who, d["expected"], check_expected=True)
    except db.Conflict as err:
        abort(409, str(err))
    return changed_cell(row, result)


def changed_cell(row, result: dict):
    """The answer to a change of the cell ``row``: the change, the cell as it is now, its case's differential
    (and, for a red cell or platelet, its red cells' counts and grades)."""
    case_id = con().execute("SELECT case_id FROM images WHERE id = ?", (row["image_id"],)).fetchone()[0]
    extra = {}
    if row["class"] in (RED_CELL, PLATELET):
        red, _ = red_cells(case_id)
        extra["red"] = {k: v for k, v in red.items() if k != "diameters"} if red else None
    return jsonify(result=result, cell=db.cell_dict(row_or_404("cells", row["id"], "cell")), differential=differential(case_id), **extra)


@api.post("/cells/<int:cell_id>/morphology")
def set_morphology(cell_id: int):
    """Set a red cell's morphology class (``morphology``; ``expected``: the class the reviewer saw); the
    case's red-cell grades follow."""
    d = body()
    new, who = text(d, "morphology"), user_name()
    row = row_or_404("cells", cell_id, "cell")
    if row["class"] != RED_CELL:
        abort(400, f"cell {cell_id} is a {row['class']}: only red cells have a morphology class")
    if "expected" not in d:
        abort(400, "'expected' (the class the reviewer saw) is required, so that a change made meanwhile in another "
                   "tab is not overwritten unseen")
    try:
        result = db.set_morphology(con(), cell_id, new, who, d["expected"])
    except ValueError as err:
        abort(400, str(err))
    except db.Conflict as err:
        abort(409, str(err))
    return changed_cell(row, result)


@api.post("/cells/<int:cell_id>/exclusion")
def set_exclusion(cell_id: int):
    """Leave a typed cell out of the differential, or a red cell or platelet out of the red-cell counts and
    grades (``reason``: one of ``db.EXCLUSIONS``) or, with ``reason`` null, count it again."""
    d = body()
    who = user_name()
    if "reason" not in d:
        abort(400, f"'reason' is required: one of {', '.join(db.EXCLUSIONS)}, or null to count the cell again")
    row = row_or_404("cells", cell_id, "cell")
    if row["type"] is None and row["class"] not in (RED_CELL, PLATELET):
        abort(400, f"cell {cell_id} is a {row['class']}: only typed (white) cells, red cells and platelets are counted")
    try:
        result = db.set_excluded(con(), cell_id, d["reason"], who)
    except ValueError as err:
        abort(400, str(err))
    except db.Conflict as err:
        abort(409, str(err))
    return changed_cell(row, result)


@api.post("/cells/<int:cell_id>/merge")
def merge_cells(cell_id: int):
    """Merge the cell ``with`` (another cell of the same image: one cell found as two) into this one: its
    outline becomes the union of both, its shape measured again, the other cell removed and its history
    moved here with a ``merge`` line. The type stays this cell's."""
    from ..cells import Cells
    from ..measure import measure
    from .worker import outline_mask, polygons

    d = body()
    other_id = d.get("with")
    if not isinstance(other_id, int) or other_id == cell_id:
        abort(400, "'with' must be the id of another cell of the same image")
    a, b = row_or_404("cells", cell_id, "cell"), row_or_404("cells", other_id, "cell")
    if a["image_id"] != b["image_id"]:
        abort(400, f"cells {cell_id} and {other_id} lie in different images")
    open_case(row_or_404("images", a["image_id"], "image")["case_id"], "its cells cannot change")
    mask, x0, y0 = outline_mask(json.loads(a["outline"]) + json.loads(b["outline"]))
    kept = json.loads(a["measurements"])
    px = (kept["area_um2"] / kept["area_px"]) ** 0.5 if kept.get("area_um2") and kept.get("area_px") else None
    h, w = mask.shape
    shape = measure(Cells(y0 + h, x0 + w, np.array([[x0, y0, x0 + w, y0 + h]]), [mask], np.ones(1), np.ones(1, np.int64)),
                    [a["class"]], px, nuclei=False)[0]
    kept.update({k: v for k, v in shape.items() if k in kept and k != "id"})
    nucleus = json.loads(a["nucleus"]) + json.loads(b["nucleus"])
    with db.transaction(con()) as c:  # the history moves, the outline grows and the other cell goes: all or none
        c.execute("UPDATE reclassifications SET cell_id = ? WHERE cell_id = ?", (cell_id, other_id))
        c.execute("INSERT INTO reclassifications (cell_id, old_type, new_type, who, at, kind) VALUES (?, ?, ?, ?, ?, 'merge')",
                  (cell_id, f"#{b['number']} ({b['type'] or b['class']})", f"#{a['number']}", user_name(), db.now()))
        c.execute("UPDATE cells SET outline = ?, nucleus = ?, bbox = ?, measurements = ? WHERE id = ?",
                  (json.dumps(polygons(mask, x0, y0)), json.dumps(nucleus), json.dumps([x0, y0, x0 + w, y0 + h]),
                   json.dumps(kept), cell_id))
        c.execute("DELETE FROM cells WHERE id = ?", (other_id,))
    return changed_cell(a, {"id": cell_id, "merged": other_id})


# ---------------------------------------------------------------------- exports
@api.get("/cases/<int:case_id>/export.csv")
def export_csv(case_id: int):
    from ..data.io import csv_text

    case_row(case_id)
    rows = []
    for r in con().execute("SELECT c.*, i.name image FROM cells c JOIN images i ON i.id = c.image_id "
                           "WHERE i.case_id = ? ORDER BY c.image_id, c.number", (case_id,)):
        rows.append({"image": r["image"], "cell": r["number"], "class": r["class"], "score": r["score"],
                     "type": r["type"] or "", "excluded": r["excluded"] or "", "predicted_type": r["predicted_type"] or "",
                     "type_confidence": "" if r["type_confidence"] is None else r["type_confidence"],
                     **json.loads(r["measurements"]), **reviewed_morphology(r)})
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["image", "cell", "class", "score", "type"]
    return csv_text(rows, keys), 200, {"Content-Type": "text/csv; charset=utf-8",
                                       "Content-Disposition": f'attachment; filename="case{case_id}_cells.csv"'}


def reviewed_morphology(row) -> dict:
    """A red cell's morphology as a reviewer set it, beside the classifier's (``predicted_morphology``);
    empty where no reviewer changed it (the measurements hold the classifier's)."""
    if not row["morphology"]:
        return {}
    return {"morphology": row["morphology"], "predicted_morphology": json.loads(row["measurements"]).get("morphology", "")}


@api.get("/cases/<int:case_id>/export_coco.json")
def export_coco(case_id: int):
    case_row(case_id)
    images, anns, cats = [], [], {}
    for img in con().execute("SELECT * FROM images WHERE case_id = ? AND status = 'done' ORDER BY id", (case_id,)):
        images.append({"id": img["id"], "file_name": img["name"], "width": img["width"], "height": img["height"]})
        for c in con().execute(f"SELECT c.*, {MORPHOLOGY} shown FROM cells c WHERE c.image_id = ? ORDER BY c.number", (img["id"],)):
            cat = cats.setdefault(c["class"], len(cats) + 1)
            x0, y0, x1, y1 = json.loads(c["bbox"])
            outline = json.loads(c["outline"])
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat,
                         "segmentation": [[v for xy in poly for v in xy] for poly in outline[:1]],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": json.loads(c["measurements"]).get("area_px"),
                         "score": c["score"], "iscrowd": 0, "cell_id": c["number"],
                         "attributes": {"type": c["type"], "predicted_type": c["predicted_type"], "excluded": c["excluded"],
                                        **({"morphology": c["shown"]} if c["class"] == RED_CELL else {})}})
    coco = {"info": {"description": f"hemaseg review station, case {case_id}"}, "images": images, "annotations": anns,
            "categories": [{"id": i, "name": n} for n, i in cats.items()]}
    return jsonify(coco), 200, {"Content-Disposition": f'attachment; filename="case{case_id}_coco.json"'}
