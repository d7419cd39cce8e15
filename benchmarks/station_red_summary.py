"""Seconds the review station takes to sum a large case's red cells (``hemaseg.web.context.red_cells``:
counts, ratios, diameters, morphology grades), which the case page asks for every second while images
are segmented and after every change - for the source tree given, so that two versions are timed in one
session, alternately (these machines are noisy):

    git worktree add ../old 77cc946
    for t in ../old . ../old .; do .venv/bin/python benchmarks/station_red_summary.py $t; done

The case is made up, in a temporary folder: 100 fields of 120 red cells and 5 platelets each (12,500
cells, measurements as ``segment`` writes them). Median of 7 calls after one untimed call.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

tree = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
sys.path[:0] = [str(tree / "src")]

import numpy as np  # noqa: E402
from flask import Flask  # noqa: E402

import hemaseg  # noqa: E402
from hemaseg.web import context, db  # noqa: E402

FIELDS, RED, PLATELETS = 100, 120, 5


def make_case(path: Path) -> None:
    con = db.connect(path)
    con.execute("INSERT INTO cases (name, created_at) VALUES ('large', ?)", (db.now(),))
    rng = np.random.default_rng(0)
    m = {"area_px": 1200, "perimeter_px": 120.0, "equivalent_diameter_px": 39.1, "circularity": 0.92, "eccentricity": 0.5,
         "centroid_x": 100.0, "centroid_y": 100.0, "bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 40, "bbox_y2": 40, "area_um2": 43.0,
         "perimeter_um": 22.0, "equivalent_diameter_um": 7.4, "elongation": 1.1, "pallor_fraction": 0.1, "counted": "True",
         "morphology": "normal", "morphology_confidence": 0.9, "um_scale": "estimated"}
    outline = json.dumps([[[float(x), float(40 - x)] for x in range(40)]])
    classes = ("normal", "spherocyte", "target", "schistocyte")
    with db.transaction(con):
        for i in range(FIELDS):
            con.execute("INSERT INTO images (case_id, name, path, status, created_at) VALUES (1, ?, '', 'done', ?)", (f"f{i}", db.now()))
            image = con.execute("SELECT last_insert_rowid()").fetchone()[0]
            con.executemany(
                "INSERT INTO cells (image_id, number, class, score, bbox, outline, nucleus, measurements) VALUES (?, ?, ?, 1, '[1, 1, 40, 40]', ?, '[]', ?)",
                [(image, k, "red_cell" if k < RED else "platelet", outline,
                  json.dumps({**m, "equivalent_diameter_um": round(float(rng.normal(7.4, 0.5)), 3), "morphology": classes[k % 4]}))
                 for k in range(RED + PLATELETS)])
    con.close()


def main() -> None:
    assert Path(hemaseg.__file__).resolve().is_relative_to(tree), f"imported {hemaseg.__file__}, not {tree}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hemaseg.sqlite3"
        make_case(path)
        app = Flask("bench")
        app.config["DB"] = str(path)
        with app.app_context():
            red, _ = context.red_cells(1)
            assert red["red_cells"] == FIELDS * RED, red["red_cells"]
            times = []
            for _ in range(7):
                t = time.perf_counter()
                context.red_cells(1)
                times.append(time.perf_counter() - t)
    print(tree, f"red_cells of {FIELDS * RED:,} red cells: {statistics.median(times):.3f} s (median of 7)", flush=True)


if __name__ == "__main__":
    main()
