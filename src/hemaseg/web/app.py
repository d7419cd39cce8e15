"""The review station's web app (Flask): pages for people (:mod:`.pages`), a JSON API under ``/api`` for
the pages and for scripts (:mod:`.api`), both blueprints over :mod:`.context`. ``create_app(data_dir)``
builds it; ``hemaseg serve`` runs it on 127.0.0.1.

Files live in ``data_dir``: ``hemaseg.sqlite3`` (the database, :mod:`hemaseg.web.db`), ``cases/CASE/``
(uploaded images, stored under their database id), ``results/CASE/IMAGE/`` (what ``hemaseg segment``
writes for the image). Server-side folders can be imported only from under ``import_root``.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, abort, jsonify, request
from werkzeug.exceptions import HTTPException

from . import db
from .api import api
from .auth import auth, csrf_token, current_user, guard, secret_key
from .context import ADULT_RANGES, Station, close
from .pages import pages
from .worker import MAX_PIXELS, Segmenter, Worker

UNIDENTIFIED = "unidentified"
MAX_UPLOAD_MB = 200


def default_segmenter(smear_cells: bool = True) -> Segmenter:
    """The bundled model and its white-cell type classifier, as ``hemaseg segment`` uses them (with
    ``smear_cells``, red cells and platelets too, as ``segment`` finds them by default)."""
    from ..celltypes import bundled_types
    from ..model import default_model
    from ..predict import ModelMethod, SegmentConfig

    cfg = SegmentConfig(smear_cells=smear_cells)
    return Segmenter(ModelMethod.from_checkpoint(default_model(), cfg), cfg, bundled_types())


def create_app(data_dir: str | Path, segmenter: Segmenter | None = None, import_root: str | Path | None = None,
               max_upload_mb: int = MAX_UPLOAD_MB, max_pixels: int = MAX_PIXELS, reference_ranges: dict | None = None,
               secure_cookies: bool = False) -> Flask:
    """The app over ``data_dir`` (created if needed). Images queued or running when the last server
    stopped are queued again."""
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    app = Flask(__name__)
    app.json.sort_keys = False  # keep the classifier's order of types
    app.config.update(MAX_CONTENT_LENGTH=max_upload_mb * 1024 * 1024, DATA=data, DB=data / "hemaseg.sqlite3",
                      IMPORT_ROOT=Path(import_root).resolve() if import_root else (data / "import"))
    app.config["IMPORT_ROOT"].mkdir(parents=True, exist_ok=True)  # where a lab drops folders to import
    db.connect(app.config["DB"]).close()  # create / migrate before serving
    seg = segmenter or default_segmenter()
    worker = Worker(app.config["DB"], data / "results", seg, max_pixels=max_pixels)
    worker.resume()
    app.extensions["hemaseg_worker"] = worker
    types = (*getattr(seg.classifier, "classes", ()), UNIDENTIFIED) if seg.classifier is not None else ()
    app.extensions["hemaseg_station"] = Station(data, worker, types, dict(reference_ranges or ADULT_RANGES))
    app.secret_key = secret_key(data)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", PERMANENT_SESSION_LIFETIME=12 * 3600,
                      SESSION_COOKIE_SECURE=secure_cookies)  # behind a TLS proxy: the cookie over HTTPS only
    app.teardown_appcontext(close)
    app.before_request(_same_origin)
    app.before_request(guard)
    app.context_processor(lambda: {"csrf": csrf_token(), "user": current_user()})
    app.register_error_handler(HTTPException, _error)
    app.register_blueprint(auth)
    app.register_blueprint(pages)
    app.register_blueprint(api)
    return app


def _same_origin():
    """Changes come from this station's own pages: a POST that another site's page makes the browser
    send (it carries that site's Origin) is refused."""
    origin = request.headers.get("Origin")
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and origin and urlsplit(origin).netloc != request.host:
        abort(403, f"requests from {origin} are not accepted; use the station's own pages")


def _error(err: HTTPException):
    """JSON errors under ``/api``, a short page elsewhere."""
    if request.path.startswith("/api/"):
        return jsonify(error=err.description, status=err.code), err.code
    page = (f"<!doctype html><meta charset=utf-8><title>{err.code} {html.escape(err.name)}</title>"
            f"<link rel=stylesheet href=/static/style.css><main><h1>{err.code} {html.escape(err.name)}</h1>"
            f"<p>{html.escape(str(err.description))}</p><p><a href=/>All cases</a></p></main>")
    return page, err.code
