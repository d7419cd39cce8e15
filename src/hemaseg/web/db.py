"""The review station's storage: SQLite through the standard ``sqlite3``, with numbered migrations.

Cases (a slide or sample, signed off by whom and when), their images (status of the segmentation),
the cells found (measurements, the type the classifier gave, the type now), and every
reclassification (old -> new, who, when). ``PRAGMA user_version`` holds the schema version; opening
a database applies the migrations it lacks, each in one transaction, so a restart loses nothing and
an older database is brought up to date.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

MIGRATIONS = (
    """
    CREATE TABLE cases (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL,
        signed_off_by TEXT,
        signed_off_at TEXT
    );
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'failed')),
        error TEXT NOT NULL DEFAULT '',
        width INTEGER,
        height INTEGER,
        created_at TEXT NOT NULL
    );
    CREATE INDEX images_case ON images(case_id);
    CREATE TABLE cells (
        id INTEGER PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        class TEXT NOT NULL,
        score REAL NOT NULL,
        predicted_type TEXT,
        type_confidence REAL,
        type TEXT,
        bbox TEXT NOT NULL,
        outline TEXT NOT NULL,
        nucleus TEXT NOT NULL,
        measurements TEXT NOT NULL,
        UNIQUE (image_id, number)
    );
    CREATE INDEX cells_image ON cells(image_id);
    CREATE TABLE reclassifications (
        id INTEGER PRIMARY KEY,
        cell_id INTEGER NOT NULL REFERENCES cells(id) ON DELETE CASCADE,
        old_type TEXT,
        new_type TEXT NOT NULL,
        who TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX reclassifications_cell ON reclassifications(cell_id);
    """,
    # 2: each image's scale as segment found it (hemaseg.segment.scale_columns, JSON)
    """
    ALTER TABLE images ADD COLUMN scale TEXT NOT NULL DEFAULT '{}';
    """,
    # 3: each field's red-cell ratios and smear hint when it was segmented with red cells (segment's
    # SMEAR_COLUMNS, JSON)
    """
    ALTER TABLE images ADD COLUMN smear TEXT NOT NULL DEFAULT '{}';
    """,
    # 4: each image's SHA-256, so that the same file is not added to a case twice
    """
    ALTER TABLE images ADD COLUMN sha256 TEXT NOT NULL DEFAULT '';
    """,
    # 5: exclusions - a cell left out of the differential with its reason (NULL: counted); the history
    # says which kind of change each row is (old/new hold the reasons of an exclusion, '' when counted)
    """
    ALTER TABLE cells ADD COLUMN excluded TEXT;
    ALTER TABLE reclassifications ADD COLUMN kind TEXT NOT NULL DEFAULT 'type';
    """,
    # 6: archived cases leave the list of cases (NULL: listed)
    """
    ALTER TABLE cases ADD COLUMN archived_at TEXT;
    """,
    # 7: the case as a lab sees it (CASE_FIELDS) and comments on cases and cells
    """
    ALTER TABLE cases ADD COLUMN details TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE cases ADD COLUMN comment TEXT NOT NULL DEFAULT '';
    ALTER TABLE cells ADD COLUMN comment TEXT NOT NULL DEFAULT '';
    """,
    # 8: accounts (hemaseg.web.auth): a password hash (werkzeug scrypt) and a role per user; a case's
    # reopenings with their reason
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('reviewer', 'supervisor', 'admin')),
        active INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL
    );
    CREATE TABLE reopenings (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
        signed_off_by TEXT NOT NULL,
        signed_off_at TEXT NOT NULL,
        reason TEXT NOT NULL,
        who TEXT NOT NULL,
        at TEXT NOT NULL
    );
    """,
    # 9: a red cell's morphology as a reviewer set it (NULL: the classifier's call, in its measurements)
    """
    ALTER TABLE cells ADD COLUMN morphology TEXT;
    """,
)
# a case's sample fields: name -> (kind, what the page shows); text fields hold at most 200 characters
CASE_FIELDS = {"sample_id": ("text", "sample ID"), "collected": ("text", "date collected"), "stain": ("text", "stain"),
               "magnification": ("text", "magnification"), "pixel_size_um": ("number", "µm per pixel"),
               "wbc_count": ("number", "white-cell count (10⁹/L)"), "target_count": ("number", "cells to count")}
EXCLUSIONS = ("artefact", "smudge_cell", "duplicate", "not_a_cell")  # why a reviewer leaves a cell out of the differential


def now() -> str:
    """UTC time as ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the database at ``path``; rows come back as ``sqlite3.Row``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA foreign_keys = ON")
    con.execute("PRAGMA journal_mode = WAL")
    migrate(con)
    return con


@contextmanager
def transaction(con: sqlite3.Connection):
    """The block's changes all at once or none: ``BEGIN IMMEDIATE`` (the write lock first, so two writers
    queue instead of failing half-way), ``COMMIT`` at its end, ``ROLLBACK`` and the error again on any
    exception.

    >>> c = sqlite3.connect(":memory:", isolation_level=None); _ = c.execute("CREATE TABLE t (x)")
    >>> try:
    ...     with transaction(c):
    ...         _ = c.execute("INSERT INTO t VALUES (1)"); raise ValueError("stop")
    ... except ValueError:
    ...     pass
    >>> with transaction(c):
    ...     _ = c.execute("INSERT INTO t VALUES (2)")
    >>> [r[0] for r in c.execute("SELECT x FROM t")]
    [2]
    """
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def migrate(con: sqlite3.Connection) -> int:
    """Apply the migrations the database lacks; returns the schema version now."""
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(f"database schema version {version} is newer than this hemaseg ({len(MIGRATIONS)})")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        with transaction(con):
            for statement in script.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute(f"PRAGMA user_version = {number}")
    return len(MIGRATIONS)


class Conflict(Exception):
    """The cell's type changed since the client read it (another tab or reviewer), or the case is signed off."""


def _change_cell(con: sqlite3.Connection, cell_id: int, column: str, value: str | None, who: str, kind: str, what: str,
                 check=None, unset: str | None = None) -> tuple[str | None, bool]:
    """Set a cell's ``column`` (``type``, ``excluded`` or ``morphology``) to ``value`` and record the change
    in its history as ``kind``, atomically: refused (:class:`Conflict`) once the case is signed off (``what``
    names the change) or by ``check(old value)``. ``unset``: the value a NULL column stands for (a red
    cell's morphology: the classifier's call). Returns the old value and whether anything changed."""
    with transaction(con):
        row = con.execute(f"SELECT c.{column} old, k.signed_off_at FROM cells c JOIN images i ON i.id = c.image_id "
                          "JOIN cases k ON k.id = i.case_id WHERE c.id = ?", (cell_id,)).fetchone()
        if row is None:
            raise KeyError(cell_id)
        if row["signed_off_at"]:
            raise Conflict(f"the case is signed off: its cells can no longer be {what}")
        old = row["old"] if row["old"] is not None else unset
        if check is not None:
            check(old)
        changed = old != value
        if changed:
            con.execute(f"UPDATE cells SET {column} = ? WHERE id = ?", (value, cell_id))
            con.execute("INSERT INTO reclassifications (cell_id, old_type, new_type, who, at, kind) VALUES (?, ?, ?, ?, ?, ?)",
                        (cell_id, old or "", value or "", who, now(), kind))
    return old, changed


def reclassify(con: sqlite3.Connection, cell_id: int, new_type: str, who: str, expected: str | None = None,
               check_expected: bool = False) -> dict:
    """Set a cell's type and record the change, atomically. With ``check_expected``, refuse
    (:class:`Conflict`) unless the type is still ``expected``: two tabs that both saw type A and chose B
    and C end with one change applied and the other told to reload, never a lost history."""
    def still_expected(old):
        if check_expected and old != expected:
            raise Conflict(f"the cell is now '{old}' (you saw '{expected}'): reload and try again")

    old, changed = _change_cell(con, cell_id, "type", new_type, who, "type", "reclassified", still_expected)
    return {"id": cell_id, "old": old, "type": new_type, "changed": changed}


def set_excluded(con: sqlite3.Connection, cell_id: int, reason: str | None, who: str) -> dict:
    """Leave a cell out of the differential (a red cell or platelet: out of the red-cell counts and grades)
    for ``reason`` (one of :data:`EXCLUSIONS`) or, with None, count it again; recorded in the history (kind
    ``exclusion``), atomically. The cell, its outline and its type stay: an exclusion is reversible.
    Refused (:class:`Conflict`) once the case is signed off."""
    if reason is not None and reason not in EXCLUSIONS:
        raise ValueError(f"unknown exclusion '{reason}'; choose from {', '.join(EXCLUSIONS)}")
    old, changed = _change_cell(con, cell_id, "excluded", reason, who, "exclusion", "excluded or counted again")
    return {"id": cell_id, "old": old, "excluded": reason, "changed": changed}


def set_morphology(con: sqlite3.Connection, cell_id: int, morphology: str, who: str, expected: str) -> dict:
    """Set a red cell's morphology class (one of :data:`hemaseg.redcells.MORPHOLOGY_CLASSES`) and record
    the change (kind ``morphology``), atomically; refused (:class:`Conflict`) unless its class is still
    ``expected`` (what the reviewer saw: the classifier's call until someone changes it), or once the case
    is signed off. Its case's grades follow (:func:`hemaseg.web.context.red_cells`)."""
    from ..redcells import MORPHOLOGY_CLASSES

    if morphology not in MORPHOLOGY_CLASSES:
        raise ValueError(f"unknown morphology '{morphology}'; choose from {', '.join(MORPHOLOGY_CLASSES)}")
    said = con.execute("SELECT json_extract(measurements, '$.morphology') FROM cells WHERE id = ?", (cell_id,)).fetchone()
    if said is None:
        raise KeyError(cell_id)

    def still_expected(old):
        if old != expected:
            raise Conflict(f"the cell is now '{old}' (you saw '{expected}'): reload and try again")

    old, changed = _change_cell(con, cell_id, "morphology", morphology, who, "morphology", "reclassified", still_expected,
                                unset=said[0])
    return {"id": cell_id, "old": old, "morphology": morphology, "changed": changed}


def cell_dict(row: sqlite3.Row) -> dict:
    """A cells row as JSON-able dict (its JSON columns decoded)."""
    d = dict(row)
    for key in ("bbox", "outline", "nucleus", "measurements"):
        d[key] = json.loads(d[key])
    return d
