"""The station's pages for people (Flask blueprint ``pages``): cases, a case, an image, the printable
differential of a case."""

from __future__ import annotations

import html
import json

from flask import Blueprint, render_template
from werkzeug.exceptions import HTTPException

from . import db
from .context import case_dict, case_row, cell_png, con, red_cells, row_or_404

pages = Blueprint("pages", __name__)


@pages.get("/")
def index():
    return render_template("index.html")


@pages.get("/cases/<int:case_id>")
def case_page(case_id: int):
    return render_template("case.html", case=case_row(case_id))


@pages.get("/images/<int:image_id>")
def image_page(image_id: int):
    row = row_or_404("images", image_id, "image")
    return render_template("image.html", image=row, scale=json.loads(row["scale"] or "{}"))


def _change(r: dict) -> dict:
    """A history row as the report words it: an exclusion's reasons as ``excluded: REASON`` / ``counted``.

    >>> _change({"kind": "exclusion", "old_type": "", "new_type": "smudge_cell"})["new_type"]
    'excluded: smudge cell'
    """
    if r["kind"] == "exclusion":
        for k in ("old_type", "new_type"):
            r[k] = f"excluded: {r[k].replace('_', ' ')}" if r[k] else "counted"
    return r


REPRESENTATIVE = 4  # cells shown per type in the printed report: the classifier's surest, not excluded


@pages.get("/cases/<int:case_id>/report.html")
def report(case_id: int):
    """The case as one printable page (A4 print CSS; the browser prints it or saves it as PDF): sample
    fields, the differential with absolute counts against the reference ranges, red cells, representative
    cells of each type, comments, images (failed ones with their error), who reviewed and who signed off,
    every change. Opened in the browser, self-contained (images inline)."""
    from ..report import html_page, html_table, red_section

    c = case_dict(case_id)
    red, fields = red_cells(case_id)
    d = c["differential"]
    changes = [_change(dict(r)) for r in con().execute(
        "SELECT i.name || ' #' || c.number cell, r.kind, r.old_type, r.new_type, r.who, r.at FROM reclassifications r "
        "JOIN cells c ON c.id = r.cell_id JOIN images i ON i.id = c.image_id WHERE i.case_id = ? ORDER BY r.id", (case_id,))]
    reviewers = sorted({r["who"] for r in changes})
    signed = (f"Signed off by {html.escape(c['signed_off_by'])} at {c['signed_off_at']} (UTC)." if c["signed_off_at"]
              else "<b>Not signed off.</b>")
    sample = [{"field": label, "value": str(c["details"].get(k, ""))} for k, (_, label) in db.CASE_FIELDS.items() if k in c["details"]]
    if "pixel_size_um" not in c["details"] and c["estimated_pixel_size"]:
        sample.append({"field": "µm per pixel (read off the images)", "value": str(c["estimated_pixel_size"])})
    sections = [
        ("Research use only", f"<p>{signed} Reviewed by: {html.escape(', '.join(reviewers)) or 'nobody yet'}.</p>"
                              "<p><b>Research use only.</b> Not for diagnosis. Cells are found and typed automatically and "
                              "corrected by the reviewers (every change below).</p>"),
        ("Sample", (html_table(sample, (("field", "field"), ("value", "value"))) if sample else "<p>No sample fields entered.</p>")
         + (f"<p>Comment: {html.escape(c['comment'])}</p>" if c["comment"] else "")),
        ("Differential", _differential_html(c, d)),
        *([red_section(red, fields)] if red else []),
        ("Representative cells", _representative(case_id, c["types"])),
        ("Cell comments", html_table(_cell_comments(case_id), (("cell", "cell"), ("type", "type"), ("comment", "comment")))),
        ("Appendix: images", html_table(c["images"], (("name", "image"), ("status", "status"), ("cells", "cells"), ("error", "error")))),
        ("Appendix: every change", html_table(changes, (("cell", "cell"), ("old_type", "from"), ("new_type", "to"), ("who", "who"),
                                                         ("at", "when (UTC)")))),
    ]
    page = html_page(f"Blood film report: {c['name']}", sections, appendix=len(sections) - 2)  # printed: page 1, then the audit trail
    return page, 200, {"Content-Disposition": f'inline; filename="case{case_id}_report.html"',
                       "Content-Type": "text/html; charset=utf-8"}


def _differential_html(c: dict, d: dict) -> str:
    """The differential as % of typed cells, absolute counts against the reference ranges (with a white-cell
    count), the count against its target, and what was left out."""
    from ..report import html_table

    counts = [{"type": t, "count": n, "percent": f"{d['percent'][t]:.1f}"} for t, n in d["counts"].items()]
    out = html_table(counts, (("type", "type"), ("count", "cells"), ("percent", "%")))
    if d["absolute"]:
        rows = [{**a, "absolute": f"{a['absolute']:.2f}", "range": "" if a["low"] is None else f"{a['low']}-{a['high']}"} for a in d["absolute"]]
        out += (f"<p>Absolute counts at a white-cell count of {c['details']['wbc_count']} x 10⁹/L (reference ranges of this "
                "station; L / H: below / above):</p>"
                + html_table(rows, (("type", "type"), ("percent", "% of white cells"), ("absolute", "10⁹/L"), ("range", "reference"),
                                    ("flag", ""))))
    out += (f"<p>{d['target']['done']} of {d['target']['count']} white cells counted; {d['total']} typed cells in "
            f"{c['progress']['done']} segmented images"
            + (f"; <b>{c['progress']['failed']} image(s) failed and are not counted</b>" if c["progress"]["failed"] else "")
            + (f"; {c['progress']['pending']} still being segmented" if c["progress"]["pending"] else "") + "."
            + (" Excluded by the reviewers (not counted): " + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in d["excluded"].items())
               + "." if d["excluded"] else "") + "</p>")
    return out


def _representative(case_id: int, types: list[str]) -> str:
    """Up to :data:`REPRESENTATIVE` cells of each type found, the surest first, as inline images."""
    import base64

    figures = []
    for t in types:
        rows = con().execute("SELECT c.*, i.name image FROM cells c JOIN images i ON i.id = c.image_id WHERE i.case_id = ? "
                             "AND c.type = ? AND c.excluded IS NULL ORDER BY c.type_confidence DESC LIMIT ?",
                             (case_id, t, REPRESENTATIVE)).fetchall()
        for r in rows:
            try:
                data = base64.b64encode(cell_png(r)).decode()
            except HTTPException:  # an image gone or unreadable: the table still counts the cell
                continue
            figures.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(t)}' width='96'>"
                           f"<figcaption>{html.escape(t)}<br>{html.escape(r['image'])} #{r['number']}</figcaption></figure>")
    return "".join(figures) or "<p>No typed cells.</p>"


def _cell_comments(case_id: int) -> list[dict]:
    return [dict(r) for r in con().execute(
        "SELECT i.name || ' #' || c.number cell, c.type, c.comment FROM cells c JOIN images i ON i.id = c.image_id "
        "WHERE i.case_id = ? AND c.comment != '' ORDER BY c.id", (case_id,))]
