"""The station's pages for people (Flask blueprint ``pages``): cases, a case, an image, the printable
differential of a case."""

from __future__ import annotations

import html
import json

from flask import Blueprint, render_template

from .context import case_dict, case_row, con, red_cells, row_or_404

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


@pages.get("/cases/<int:case_id>/report.html")
def report(case_id: int):
    """The case's differential, its images (failed ones with their error), its red cells and its
    reclassifications as one offline HTML page, opened in the browser (to print or save)."""
    from ..report import html_page, html_table, red_section

    c = case_dict(case_id)
    red, fields = red_cells(case_id)
    d = c["differential"]
    counts = [{"type": t, "count": n, "percent": f"{d['percent'][t]:.1f}"} for t, n in d["counts"].items()]
    changes = [_change(dict(r)) for r in con().execute(
        "SELECT i.name || ' #' || c.number cell, r.kind, r.old_type, r.new_type, r.who, r.at FROM reclassifications r "
        "JOIN cells c ON c.id = r.cell_id JOIN images i ON i.id = c.image_id WHERE i.case_id = ? ORDER BY r.id", (case_id,))]
    signed = (f"Signed off by {html.escape(c['signed_off_by'])} at {c['signed_off_at']} (UTC)." if c["signed_off_at"]
              else "<b>Not signed off.</b>")
    page = html_page(f"White-cell differential: {c['name']}", [
        ("Research use only", f"<p>{signed}</p><p><b>Research use only.</b> Types come from an automatic classifier "
                              "and the reviewers' corrections listed below.</p>"),
        ("Differential", html_table(counts, (("type", "type"), ("count", "cells"), ("percent", "%")))
         + f"<p>{d['total']} typed cells in {c['progress']['done']} segmented images"
         + (f"; <b>{c['progress']['failed']} image(s) failed and are not counted</b>" if c["progress"]["failed"] else "")
         + (f"; {c['progress']['pending']} still being segmented" if c["progress"]["pending"] else "") + "."
         + (" Excluded by the reviewers (not counted): " + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in d["excluded"].items())
            + "." if d["excluded"] else "") + "</p>"),
        ("Images", html_table(c["images"], (("name", "image"), ("status", "status"), ("cells", "cells"), ("error", "error")))),
        *([red_section(red, fields)] if red else []),
        ("Reclassifications", html_table(changes, (("cell", "cell"), ("old_type", "from"), ("new_type", "to"),
                                                    ("who", "who"), ("at", "when (UTC)")))),
    ])
    return page, 200, {"Content-Disposition": f'inline; filename="case{case_id}_differential.html"',
                       "Content-Type": "text/html; charset=utf-8"}
