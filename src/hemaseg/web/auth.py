"""The station's accounts (Flask blueprint ``auth``): users with hashed passwords (werkzeug's scrypt), log
in and out, a session per browser, a CSRF token on every change, roles, and failed logins slowed down.

Roles, each with the rights of those before it (:data:`ROLES`): ``reviewer`` (cases, images, types,
exclusions, comments), ``supervisor`` (also signs cases off and reopens them with a reason), ``admin``
(also manages users). Every change is recorded under the logged-in user's name, never a typed one.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import sqlite3
import time
from pathlib import Path

from flask import Blueprint, abort, current_app, g, jsonify, redirect, render_template, request, session, url_for
from werkzeug.security import check_password_hash, generate_password_hash

from . import db

auth = Blueprint("auth", __name__)
ROLES = ("reviewer", "supervisor", "admin")
MIN_PASSWORD = 8
FAILURES_ALLOWED = 5  # failed logins of one name from one address before each further try waits
LOCKOUT_S = 30  # the first wait; it doubles with each further failure, up to LOCKOUT_MAX_S
LOCKOUT_MAX_S = 900
OPEN = {"auth.login", "auth.login_form", "static"}  # what an anonymous browser may reach
CHANGES = ("POST", "PUT", "PATCH", "DELETE")


class AccountError(ValueError):
    """A user that cannot be created or changed as asked (the message says why)."""


def add_user(con: sqlite3.Connection, name: str, password: str, role: str) -> int:
    """Create a user; refused (:class:`AccountError`) for an empty or taken name, a short password or an
    unknown role. Returns its id."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise AccountError("a user name must be 1-200 characters")
    if role not in ROLES:
        raise AccountError(f"unknown role '{role}'; choose from {', '.join(ROLES)}")
    if len(password or "") < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    try:
        return con.execute("INSERT INTO users (name, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                           (name, generate_password_hash(password), role, db.now())).lastrowid
    except sqlite3.IntegrityError as err:
        raise AccountError(f"a user named '{name}' already exists") from err


def has_users(con: sqlite3.Connection) -> bool:
    return con.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None


def secret_key(data: Path) -> bytes:
    """The key that signs this station's session cookies: made once, kept in ``DATA_DIR/secret_key``
    (readable by its owner only), so that a restart keeps everyone logged in."""
    path = data / "secret_key"
    if not path.is_file():
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()


# ---------------------------------------------------------------------- who is asking
def current_user() -> sqlite3.Row | None:
    """The logged-in user of this request (an active one), or None."""
    if "user" not in g:
        from .context import con

        uid = session.get("uid")
        g.user = con().execute("SELECT * FROM users WHERE id = ? AND active = 1", (uid,)).fetchone() if uid else None
    return g.user


def user_name() -> str:
    """The logged-in user's name, as the history records it."""
    return current_user()["name"]


def can(role: str) -> bool:
    """Whether the logged-in user has ``role``'s rights (:data:`ROLES`, each including those before it)."""
    user = current_user()
    return user is not None and ROLES.index(user["role"]) >= ROLES.index(role)


def requires(role: str):
    """A view decorator: 403 unless the logged-in user has ``role``'s rights."""
    def wrap(view):
        @functools.wraps(view)
        def checked(*args, **kwargs):
            if not can(role):
                abort(403, f"this needs the {role} role (you are {current_user()['role']})")
            return view(*args, **kwargs)
        return checked
    return wrap


def csrf_token() -> str:
    """This session's CSRF token (made on first use), for the pages' forms and the API header."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def guard():
    """Before every request: an anonymous one reaches only the login page (the API answers 401, a page
    sends the browser to log in); every change carries this session's CSRF token (header ``X-CSRF-Token``
    or form field ``csrf``), or 400."""
    if request.method in CHANGES:
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf", "")
        if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
            abort(400, "missing or stale CSRF token: reload the page")
    if request.endpoint in OPEN or current_user() is not None:
        return None
    if request.path.startswith("/api/"):
        abort(401, "log in first")
    return redirect(url_for("auth.login_form", next=request.full_path.rstrip("?")))


# ---------------------------------------------------------------------- failed logins
def _failures() -> dict:
    return current_app.extensions.setdefault("hemaseg_login_failures", {})


def _wait_left(key: tuple[str, str]) -> float:
    """Seconds before ``key`` (name, address) may try again: none for the first failures, then
    :data:`LOCKOUT_S` doubling per further failure."""
    count, last = _failures().get(key, (0, 0.0))
    if count < FAILURES_ALLOWED:
        return 0.0
    wait = min(LOCKOUT_MAX_S, LOCKOUT_S * 2 ** (count - FAILURES_ALLOWED))
    return max(0.0, last + wait - time.monotonic())


# ---------------------------------------------------------------------- pages and API
@auth.get("/login")
def login_form():
    from .context import con

    page = render_template("login.html", next=request.args.get("next", "/"), csrf=csrf_token(), first_run=not has_users(con()))
    return page, 200, {"X-CSRF-Token": csrf_token()}  # (for scripts: send it back with the login)


@auth.post("/login")
def login():
    """Log in (form or JSON ``name``, ``password``); failed logins of one name from one address are slowed
    down (429 with ``Retry-After``)."""
    from .context import con

    d = request.get_json(silent=True) if request.is_json else request.form
    name, password = str((d or {}).get("name", "")).strip(), str((d or {}).get("password", ""))
    key = (name.lower(), request.remote_addr or "")
    wait = _wait_left(key)
    if wait > 0:
        return _refused(429, f"too many failed logins for '{name}': try again in {wait:.0f} s", {"Retry-After": str(int(wait) + 1)})
    user = con().execute("SELECT * FROM users WHERE name = ? AND active = 1", (name,)).fetchone()
    if user is None or not check_password_hash(user["password_hash"], password):
        count, _ = _failures().get(key, (0, 0.0))
        _failures()[key] = (count + 1, time.monotonic())
        return _refused(401, "wrong name or password")
    _failures().pop(key, None)
    session.clear()
    session.permanent = True
    session["uid"] = user["id"]
    csrf_token()
    if request.is_json:
        return jsonify(name=user["name"], role=user["role"], csrf=session["csrf"])
    target = request.form.get("next", "/")
    return redirect(target if target.startswith("/") and not target.startswith("//") else "/")


def _refused(status: int, message: str, headers: dict | None = None):
    if request.is_json:
        return jsonify(error=message, status=status), status, headers or {}
    from .context import con

    page = render_template("login.html", next=request.form.get("next", "/"), csrf=csrf_token(), error=message,
                           first_run=not has_users(con()))
    return page, status, headers or {}


@auth.post("/logout")
def logout():
    session.clear()
    return (jsonify(ok=True) if request.is_json else redirect(url_for("auth.login_form")))


@auth.get("/api/me")
def me():
    user = current_user()
    return jsonify(name=user["name"], role=user["role"], csrf=csrf_token())


@auth.get("/users")
@requires("admin")
def users_page():
    return render_template("users.html", roles=ROLES)


@auth.get("/api/users")
@requires("admin")
def list_users():
    from .context import con

    return jsonify([dict(r) for r in con().execute("SELECT id, name, role, active, created_at FROM users ORDER BY id")])


@auth.post("/api/users")
@requires("admin")
def create_user():
    from .context import body, con

    d = body()
    try:
        uid = add_user(con(), str(d.get("name", "")), str(d.get("password", "")), str(d.get("role", "")))
    except AccountError as err:
        abort(400, str(err))
    return jsonify(id=uid, name=str(d["name"]).strip(), role=d["role"]), 201


@auth.post("/api/users/<int:user_id>")
@requires("admin")
def change_user(user_id: int):
    """Change a user's ``role``, ``active`` (false: can no longer log in) or ``password``; an admin cannot
    take their own admin rights away (the station would have no admin)."""
    from .context import body, con, row_or_404

    d = body()
    user = row_or_404("users", user_id, "user")
    if user_id == current_user()["id"] and (d.get("role", "admin") != "admin" or d.get("active", True) is not True):
        abort(400, "you cannot take your own admin rights away: another admin can")
    if "role" in d:
        if d["role"] not in ROLES:
            abort(400, f"unknown role '{d['role']}'; choose from {', '.join(ROLES)}")
        con().execute("UPDATE users SET role = ? WHERE id = ?", (d["role"], user_id))
    if "active" in d:
        if not isinstance(d["active"], bool):
            abort(400, "'active' must be true or false")
        con().execute("UPDATE users SET active = ? WHERE id = ?", (int(d["active"]), user_id))
    if "password" in d:
        if len(str(d["password"])) < MIN_PASSWORD:
            abort(400, f"a password needs at least {MIN_PASSWORD} characters")
        con().execute("UPDATE users SET password_hash = ? WHERE id = ?", (generate_password_hash(str(d["password"])), user_id))
    return jsonify({k: v for k, v in dict(row_or_404("users", user["id"], "user")).items() if k != "password_hash"})
