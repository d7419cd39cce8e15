"""The review station's web app (Flask): pages for people, a JSON API under ``/api`` for the pages and
for scripts. ``create_app(data_dir)`` builds it; ``hemaseg serve`` runs it on 127.0.0.1.

Files live in ``data_dir``: ``hemaseg.sqlite3`` (the database, :mod:`hemaseg.web.db`), ``cases/CASE/``
(uploaded images, stored under their database id), ``results/CASE/IMAGE/`` (what ``hemaseg segment``
writes for the image). Server-side folders can be imported only from under ``import_root``.
"""

from __future__ import annotations

import functools
import html
import io
import json
import re
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, abort, g, jsonify, render_template, request, send_file
from PIL import Image
from werkzeug.exceptions import HTTPException

from ..data.formats import IMAGE_EXTENSIONS
from ..data.io import atomic_write
from . import db
from .worker import MAX_PIXELS, Segmenter, Worker

UNIDENTIFIED = "unidentified"
MAX_UPLOAD_MB = 200
MAX_NAME = 200


def default_segmenter() -> Segmenter:
    """The bundled model and its white-cell type classifier, as ``hemaseg segment`` uses them."""
    from ..classify import load_classifier
    from ..model import BUNDLED_CLASSIFIER, default_model
    from ..predict import ModelMethod, SegmentConfig

    cfg = SegmentConfig()
    clf = load_classifier(BUNDLED_CLASSIFIER) if BUNDLED_CLASSIFIER.is_file() else None
    return Segmenter(ModelMethod.from_checkpoint(default_model(), cfg), cfg, clf)


def create_app(data_dir: str | Path, segmenter: Segmenter | None = None, import_root: str | Path | None = None,
               max_upload_mb: int = MAX_UPLOAD_MB, max_pixels: int = MAX_PIXELS) -> Flask:
    """The app over ``data_dir`` (created if needed). Images queued or running when the last server
    stopped are queued again."""
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    app = Flask(__name__)
    app.json.sort_keys = False  # keep the classifier's order of types
    app.config.update(MAX_CONTENT_LENGTH=max_upload_mb * 1024 * 1024, DATA=data, DB=data / "hemaseg.sqlite3",
                      IMPORT_ROOT=Path(import_root).resolve() if import_root else (data / "import"))
    db.connect(app.config["DB"]).close()  # create / migrate before serving
    seg = segmenter or default_segmenter()
    worker = Worker(app.config["DB"], data / "results", seg, max_pixels=max_pixels)
    worker.resume()
    app.extensions["hemaseg_worker"] = worker
    types = [*getattr(seg.classifier, "classes", ()), UNIDENTIFIED] if seg.classifier is not None else []

    def con() -> sqlite3.Connection:
        if "con" not in g:
            g.con = db.connect(app.config["DB"])
        return g.con

    @app.teardown_appcontext
    def _close(exc):
        c = g.pop("con", None)
        if c is not None:
            c.close()

    @app.before_request
    def _same_origin():
        """Changes come from this station's own pages: a POST that another site's page makes the browser
        send (it carries that site's Origin) is refused."""
        origin = request.headers.get("Origin")
        if request.method == "POST" and origin and urlsplit(origin).netloc != request.host:
            abort(403, f"requests from {origin} are not accepted; use the station's own pages")

    @app.errorhandler(HTTPException)
    def _error(err: HTTPException):
        if request.path.startswith("/api/"):
            return jsonify(error=err.description, status=err.code), err.code
        page = (f"<!doctype html><meta charset=utf-8><title>{err.code} {html.escape(err.name)}</title>"
                f"<link rel=stylesheet href=/static/style.css><main><h1>{err.code} {html.escape(err.name)}</h1>"
                f"<p>{html.escape(str(err.description))}</p><p><a href=/>All cases</a></p></main>")
        return page, err.code

    # ------------------------------------------------------------------ helpers
    def body() -> dict:
        d = request.get_json(silent=True)
        if not isinstance(d, dict):
            abort(400, "expected a JSON object body")
        return d

    def text(d: dict, key: str) -> str:
        v = d.get(key)
        if not isinstance(v, str) or not v.strip() or len(v) > MAX_NAME:
            abort(400, f"'{key}' must be a non-empty text of at most {MAX_NAME} characters")
        return v.strip()

    def case_row(case_id: int) -> sqlite3.Row:
        row = con().execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()
        if row is None:
            abort(404, f"no case {case_id}")
        return row

    def differential(case_id: int) -> dict:
        rows = con().execute("SELECT c.type, COUNT(*) n FROM cells c JOIN images i ON i.id = c.image_id "
                             "WHERE i.case_id = ? AND c.type IS NOT NULL GROUP BY c.type", (case_id,)).fetchall()
        counts = {t: 0 for t in types}
        counts.update({r["type"]: r["n"] for r in rows})
        total = sum(counts.values())
        return {"counts": counts, "total": total,
                "percent": {t: round(100 * n / total, 1) if total else 0.0 for t, n in counts.items()}}

    def case_dict(case_id: int) -> dict:
        c = dict(case_row(case_id))
        images = [dict(r) for r in con().execute(
            "SELECT i.id, i.name, i.status, i.error, i.width, i.height, COUNT(c.id) cells FROM images i "
            "LEFT JOIN cells c ON c.image_id = i.id WHERE i.case_id = ? GROUP BY i.id ORDER BY i.id", (case_id,))]
        status = [i["status"] for i in images]
        c.update(images=images, differential=differential(case_id), types=types,
                 progress={"total": len(images), "done": status.count("done"), "failed": status.count("failed"),
                           "pending": status.count("queued") + status.count("running")})
        return c

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
        folder = data / "cases" / str(case_id)
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
            worker.enqueue(image_id)
        return ids

    def open_case(case_id: int) -> sqlite3.Row:
        row = case_row(case_id)
        if row["signed_off_at"]:
            abort(409, f"case {case_id} is signed off: no more images can be added")
        return row

    # ------------------------------------------------------------------ pages
    @app.get("/")
    def index():
        return render_template("index.html")

    @app.get("/cases/<int:case_id>")
    def case_page(case_id: int):
        return render_template("case.html", case=case_row(case_id))

    @app.get("/images/<int:image_id>")
    def image_page(image_id: int):
        row = con().execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            abort(404, f"no image {image_id}")
        return render_template("image.html", image=row, scale=json.loads(row["scale"] or "{}"))

    @app.get("/cases/<int:case_id>/report.html")
    def report(case_id: int):
        from ..report import html_page, html_table

        c = case_dict(case_id)
        d = c["differential"]
        counts = [{"type": t, "count": n, "percent": f"{d['percent'][t]:.1f}"} for t, n in d["counts"].items()]
        changes = [dict(r) for r in con().execute(
            "SELECT i.name || ' #' || c.number cell, r.old_type, r.new_type, r.who, r.at FROM reclassifications r "
            "JOIN cells c ON c.id = r.cell_id JOIN images i ON i.id = c.image_id WHERE i.case_id = ? ORDER BY r.id", (case_id,))]
        signed = (f"Signed off by {html.escape(c['signed_off_by'])} at {c['signed_off_at']} (UTC)." if c["signed_off_at"]
                  else "<b>Not signed off.</b>")
        page = html_page(f"White-cell differential: {c['name']}", [
            ("Research use only", f"<p>{signed}</p><p><b>Research use only.</b> Types come from an automatic classifier "
                                  "and the reviewers' corrections listed below.</p>"),
            ("Differential", html_table(counts, (("type", "type"), ("count", "cells"), ("percent", "%")))
             + f"<p>{d['total']} typed cells in {len(c['images'])} images.</p>"),
            ("Reclassifications", html_table(changes, (("cell", "cell"), ("old_type", "from"), ("new_type", "to"),
                                                        ("who", "who"), ("at", "when (UTC)")))),
        ])
        return page, 200, {"Content-Disposition": f'attachment; filename="case{case_id}_differential.html"',
                           "Content-Type": "text/html; charset=utf-8"}

    # ------------------------------------------------------------------ API: cases and images
    @app.get("/api/cases")
    def list_cases():
        rows = con().execute("SELECT k.*, COUNT(i.id) images FROM cases k LEFT JOIN images i ON i.case_id = k.id "
                             "GROUP BY k.id ORDER BY k.id DESC").fetchall()
        return jsonify([dict(r) for r in rows])

    @app.post("/api/cases")
    def create_case():
        name = text(body(), "name")
        cur = con().execute("INSERT INTO cases (name, created_at) VALUES (?, ?)", (name, db.now()))
        return jsonify(case_dict(cur.lastrowid)), 201

    @app.get("/api/cases/<int:case_id>")
    def get_case(case_id: int):
        return jsonify(case_dict(case_id))

    @app.post("/api/cases/<int:case_id>/images")
    def upload(case_id: int):
        open_case(case_id)
        files = request.files.getlist("files")
        if not files:
            abort(400, "no files: send them as multipart form field 'files'")
        ids = add_images(case_id, [(f.filename or "image", f.read()) for f in files])
        return jsonify(ids=ids, case=case_dict(case_id)), 201

    @app.post("/api/cases/<int:case_id>/import")
    def import_folder(case_id: int):
        open_case(case_id)
        root = app.config["IMPORT_ROOT"]
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

    @app.post("/api/cases/<int:case_id>/signoff")
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

    @app.get("/api/images/<int:image_id>")
    def get_image(image_id: int):
        row = con().execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            abort(404, f"no image {image_id}")
        cells = [db.cell_dict(r) for r in con().execute("SELECT * FROM cells WHERE image_id = ? ORDER BY number", (image_id,))]
        d = {k: row[k] for k in row.keys() if k != "path"}
        return jsonify({**d, "cells": cells, "types": types})

    @functools.lru_cache(maxsize=4)  # a gallery asks for many crops of the same few images; stored images never change
    def decoded(path: str):
        from ..data.contract import image_to_rgb8
        from ..data.io import read_image

        return image_to_rgb8(read_image(path))

    def image_rgb(image_id: int):
        row = con().execute("SELECT path FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None or not row["path"]:
            abort(404, f"no image {image_id}")
        try:
            return decoded(row["path"])
        except Exception as err:
            abort(422, f"image {image_id} cannot be read: {err}")

    def png(arr) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    @app.get("/api/images/<int:image_id>/file")
    def image_file(image_id: int):
        cached = data / "results" / "view" / f"{image_id}.png"
        if not cached.is_file():
            payload = png(image_rgb(image_id))
            atomic_write(cached, lambda tmp: tmp.write_bytes(payload))
        return send_file(cached, mimetype="image/png", max_age=3600)

    # ------------------------------------------------------------------ API: cells
    def cell_row(cell_id: int) -> sqlite3.Row:
        row = con().execute("SELECT * FROM cells WHERE id = ?", (cell_id,)).fetchone()
        if row is None:
            abort(404, f"no cell {cell_id}")
        return row

    @app.get("/api/cases/<int:case_id>/cells")
    def case_cells(case_id: int):
        case_row(case_id)
        rows = con().execute("SELECT c.id, c.image_id, c.number, c.class, c.type, c.predicted_type, c.type_confidence, "
                             "json_extract(c.measurements, '$.top_type') top_type, "
                             "json_extract(c.measurements, '$.second_type') second_type, "
                             "json_extract(c.measurements, '$.second_confidence') second_confidence, "
                             "i.name image FROM cells c JOIN images i ON i.id = c.image_id WHERE i.case_id = ? "
                             "ORDER BY c.image_id, c.number", (case_id,)).fetchall()
        return jsonify([dict(r) for r in rows])

    @app.get("/api/cells/<int:cell_id>")
    def get_cell(cell_id: int):
        d = db.cell_dict(cell_row(cell_id))
        d["history"] = [dict(r) for r in con().execute("SELECT old_type, new_type, who, at FROM reclassifications "
                                                       "WHERE cell_id = ? ORDER BY id", (cell_id,))]
        return jsonify(d)

    @app.get("/api/cells/<int:cell_id>/crop.png")
    def cell_crop(cell_id: int):
        row = cell_row(cell_id)
        x0, y0, x1, y1 = json.loads(row["bbox"])
        rgb = image_rgb(row["image_id"])
        pad = max(4, (x1 - x0) // 6)
        h, w = rgb.shape[:2]
        crop = rgb[max(0, y0 - pad):min(h, y1 + pad), max(0, x0 - pad):min(w, x1 + pad)]
        return send_file(io.BytesIO(png(crop)), mimetype="image/png", max_age=3600)

    @app.post("/api/cells/<int:cell_id>/type")
    def set_type(cell_id: int):
        d = body()
        new, who = text(d, "type"), text(d, "who")
        row = cell_row(cell_id)
        if row["type"] is None:
            abort(400, f"cell {cell_id} is a {row['class']}: only typed (white) cells are reclassified")
        if types and new not in types:
            abort(400, f"unknown type '{new}'; choose from {', '.join(types)}")
        try:
            result = db.reclassify(con(), cell_id, new, who, d.get("expected"), check_expected="expected" in d)
        except db.Conflict as err:
            abort(409, str(err))
        case_id = con().execute("SELECT case_id FROM images WHERE id = ?", (row["image_id"],)).fetchone()[0]
        return jsonify(result=result, cell=db.cell_dict(cell_row(cell_id)), differential=differential(case_id))

    # ------------------------------------------------------------------ exports
    @app.get("/api/cases/<int:case_id>/export.csv")
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

    @app.get("/api/cases/<int:case_id>/export_coco.json")
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

    return app
