"""Tables and one self-contained HTML page (inline CSS, images as data URIs: opens with no network)."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .classify import UNIDENTIFIED, WBC_TYPES
from .data.io import DataError, why
from .data.formats import DatasetSource, SampleRef
from .evaluation import Evaluation
from .predict import Method, SegmentConfig
from .redcells import FRAME_SHARE, MOSTLY_UNSURE, is_counted, morphology_grades, unsure_share
from .viz import histogram_png

COMPARE_COLUMNS = (("method", "method"), ("images", "images"), ("mean_iou", "mean IoU"), ("mean_dice", "Dice"),
                   ("f1_50", "F1@0.5"), ("pq_50", "PQ@0.5"), ("mask_AP", "mask AP"), ("mask_AP50", "mask AP50"),
                   ("box_AP", "box AP"), ("nucleus_dice", "nucleus Dice"), ("nucleus_iou", "nucleus IoU"), ("seconds_per_image", "s/image"))


def compare_rows(evals: Sequence[Evaluation]) -> list[dict]:
    """One row per method with the summary metrics of :data:`COMPARE_COLUMNS`."""
    return [{k: ev.summary.get(k) for k, _ in COMPARE_COLUMNS} for ev in evals]


def _fmt(v) -> str:
    if isinstance(v, float) and v != v:
        return "n/a"  # nothing scored (no true and no found cell)
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return "" if v is None else str(v)


def markdown_table(rows: list[dict], columns=COMPARE_COLUMNS) -> str:
    head = "| " + " | ".join(t for _, t in columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |\n" for r in rows)


def html_table(rows: list[dict], columns) -> str:
    """An HTML table of ``rows`` with ``columns`` = ``(key, heading)`` pairs; values escaped."""
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for k, _ in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def html_page(title: str, sections: list[tuple[str, str]], appendix: int | None = None) -> str:
    """A complete HTML document from ``(heading, inner HTML)`` sections; no external resources. Printed
    (A4), the sections from index ``appendix`` on start on a new page."""
    css = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
           "figure{display:inline-block;margin:6px}img{image-rendering:pixelated;max-width:100%}"
           "figcaption{font-size:small;color:#555}"
           "@page{size:A4;margin:12mm}@media print{body{margin:0;max-width:none;font-size:10pt}h2{break-after:avoid}"
           "figure,tr{break-inside:avoid}img{max-width:85mm}figure img{width:16mm}figure{margin:2px}"
           "h2.appendix{break-before:page;column-span:all}td,th{padding:0 4px}h2{font-size:12pt;margin:6px 0 3px}"
           "h1{font-size:15pt;column-span:all}p{margin:3px 0}.print-columns{columns:2;column-gap:8mm}}")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    main = sections if appendix is None else sections[:appendix]
    body = "".join(f"<h2>{html.escape(h)}</h2>{inner}" for h, inner in main)
    if appendix is not None:  # printed in two columns to fit a page; the appendix after it, on its own pages
        body = f"<div class=print-columns>{body}</div>" + "".join(
            f"<h2 class=appendix>{html.escape(h)}</h2>{inner}" for h, inner in sections[appendix:])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1><p>hemaseg, {stamp}</p>{body}</body></html>\n")


def evaluation_sections(evals: Sequence[Evaluation], figures: dict[str, bytes], curves: bytes | None = None) -> list[tuple[str, str]]:
    """Report sections: the comparison table, matching by IoU threshold per method, curves, figures."""
    sections = [("Summary", html_table(compare_rows(evals), COMPARE_COLUMNS))]
    cols = (("thresh", "IoU ≥"), ("tp", "TP"), ("fp", "FP"), ("fn", "FN"), ("precision", "precision"),
            ("recall", "recall"), ("f1", "F1"), ("mean_matched_iou", "matched IoU"), ("panoptic_quality", "PQ"))
    for ev in evals:
        sections.append((f"Instance matching: {ev.method}", html_table(list(ev.summary["matching"].values()), cols)))
    if curves:
        sections.append(("Training curves", _img(curves, "loss and validation scores per epoch")))
    if figures:
        sections.append(("Worst and best images", "".join(_img(png, name) for name, png in figures.items())))
    return sections


@dataclass
class Comparison:
    """What :func:`compare_methods` scored and wrote: each method's evaluation, the markdown table, and
    how many images could not be scored (listed in each method's ``failed.csv``)."""

    evaluations: list[Evaluation]
    table: str
    failed: int


def compare_methods(methods: Sequence[Method], source: DatasetSource, refs: list[SampleRef], out: str | Path,
                    cfg: SegmentConfig = SegmentConfig(), run: str | Path | None = None, title: str = "Comparison",
                    progress: bool = True, log: Callable[[str], None] = print) -> Comparison:
    """Score each method on ``refs`` (:func:`~hemaseg.evaluation.evaluate_method`) and write, in ``out``,
    each one's evaluation (in ``out`` itself for one method, else in ``out/METHOD``), ``compare.md``,
    ``compare.csv`` and ``report.html`` (with the training curves of the run folder ``run``, if given).
    Each image that could not be scored is said through ``log``."""
    from .data.io import csv_text, write_text
    from .evaluation import evaluate_method, write_evaluation
    from .viz import training_curves_png

    out = Path(out)
    evals, figures = [], {}
    for m in methods:
        ev = evaluate_method(m, source, refs, cfg, progress=progress)
        for path, err in ev.failed:
            log(f"failed ({m.name}): {path}: {err}")
        for key, path in write_evaluation(ev, out if len(methods) == 1 else out / m.name).items():
            if key.startswith("figure_"):
                figures[f"{m.name}: {path.stem}"] = path.read_bytes()
        evals.append(ev)
    rows = compare_rows(evals)
    table = markdown_table(rows)
    write_text(out / "compare.md", table)
    write_text(out / "compare.csv", csv_text(rows, list(rows[0])))
    curves = None
    if run is not None:
        with open(Path(run) / "metrics.csv", encoding="utf-8") as fh:
            curves = training_curves_png(list(csv.DictReader(fh)))
    write_text(out / "report.html", html_page(title, evaluation_sections(evals, figures, curves)))
    return Comparison(evals, table, sum(len(ev.failed) for ev in evals))


# ------------------------------------------------------------------------------ differential
def lab_counts(counts: dict[str, int]) -> dict:
    """The differential as a lab reports it, from cells per type: white cells (all typed cells but
    erythroblasts and platelets; unidentified ones included until reviewed), the five-part count
    (neutrophils = segmented + band), immature granulocytes (promyelocytes, myelocytes, metamyelocytes)
    in % of white cells, and erythroblasts per 100 white cells.

    >>> d = lab_counts({"segmented_neutrophil": 5, "band_neutrophil": 1, "lymphocyte": 3, "myelocyte": 1,
    ...                 "erythroblast": 2, "platelet": 4, "unidentified": 0})
    >>> d["white_cells"], d["five_part"]["neutrophil"], d["immature_granulocyte_percent"], d["erythroblasts_per_100_wbc"]
    (10, 6, 10.0, 20.0)
    """
    from .celltypes import FIVE_PART, GROUPS

    white = sum(n for t, n in counts.items() if t not in ("erythroblast", "platelet"))
    five = {t: sum(counts.get(x, 0) for x in (t, *GROUPS.get(t, ()))) for t in FIVE_PART}
    ig = sum(counts.get(x, 0) for x in ("immature_granulocyte", *GROUPS["immature_granulocyte"]))
    pct = lambda n: round(100 * n / white, 2) if white else 0.0  # noqa: E731
    return {"white_cells": white, "five_part": five, "five_part_percent": {t: pct(n) for t, n in five.items()},
            "immature_granulocytes": ig, "immature_granulocyte_percent": pct(ig),
            "erythroblasts": counts.get("erythroblast", 0), "erythroblasts_per_100_wbc": pct(counts.get("erythroblast", 0)),
            "platelets": counts.get("platelet", 0), "unidentified": counts.get(UNIDENTIFIED, 0)}


def tally(types: Sequence[str], found: Iterable[str]) -> dict:
    """The differential of typed cells: ``counts`` per type (each of ``types``, in order, even if none was
    found; then any other type found, sorted), ``percent`` of all typed cells and their ``total``. The one
    count behind ``hemaseg report`` and the review station.

    >>> tally(["band", "lymphocyte"], ["lymphocyte", "blast", "lymphocyte", "blast"])
    {'counts': {'band': 0, 'lymphocyte': 2, 'blast': 2}, 'percent': {'band': 0.0, 'lymphocyte': 50.0, 'blast': 50.0}, 'total': 4}
    """
    found = list(found)
    order = list(dict.fromkeys(types))
    counts = {t: 0 for t in order + sorted(set(found) - set(order))}
    for t in found:
        counts[t] += 1
    total = len(found)
    return {"counts": counts, "percent": {t: (100 * n / total if total else 0.0) for t, n in counts.items()}, "total": total}


def differential(results_dir: str | Path) -> dict:
    """Read a ``segment`` output folder: counts and percentages per type (of all typed cells), the lab's
    differential (:func:`lab_counts`), per-image rows, every typed cell (with its image and bbox) and the
    N:C ratios. Only the images of the folder's last batch count (the rows of ``summary.csv``); a missing
    or unreadable ``NAME_cells.csv`` of one of them is refused (:class:`DataError`), not skipped."""
    root = Path(results_dir)
    images = _csv_rows(root / "summary.csv", ("image", "name", "status"), "run `hemaseg segment` into this folder again")
    typed = bool(images) and f"n_{UNIDENTIFIED}" in images[0]
    if not typed and not (images and "n_red_cells" in images[0]):
        raise DataError(f"{root}: no white-cell types and no red cells in summary.csv; run `hemaseg segment` with "
                        "--classifier or --red-cells")
    cells, red = [], []
    for image in images:
        if image["status"] != "ok":
            continue
        needed = ("id", "class", *(("type",) if typed else ()), "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
        for row in _csv_rows(root / f"{image['name']}_cells.csv", needed, f"segment {image['image']} again (summary.csv lists it as done)"):
            if row.get("type"):
                row["source"] = image["name"]
                cells.append(row)
            elif row.get("class") == "red_cell" and is_counted(row):  # not the slivers cut by the frame
                red.append(row)
    from .celltypes import TYPES

    known = [*TYPES, *WBC_TYPES, UNIDENTIFIED]
    types = [t for t in dict.fromkeys(known) if f"n_{t}" in images[0]]
    d = tally(types, (c["type"] for c in cells))
    return {**d, "typed": typed, "lab": lab_counts(d["counts"]), "images": images, "cells": cells, "red": red_cell_summary(images, red),
            "nc_ratio": [float(c["nc_ratio"]) for c in cells if c.get("nc_ratio")]}


def red_cell_summary(images: list[dict], red: list[dict]) -> dict | None:
    """Red cells and platelets of a segment folder made with ``--red-cells`` (None without; ``images``:
    summary.csv's rows, ``red``: the red cells' rows of the cells CSVs): their counts, platelets and white
    cells per 1000 red cells, the red cells' diameters (µm where the scale is known, else px) with their
    mean - the Price-Jones curve's data - and, where the red cells have a ``morphology``, the share and
    ICSH grade of each class (:func:`hemaseg.redcells.morphology_grades`); ``scale_estimated``: their µm
    come from a field's estimated scale (``um_scale``), not a given pixel size; ``morphology_unsure``: the
    share of red cells the classifier is unsure of (:func:`hemaseg.redcells.unsure_share`; a reviewer's
    class counts as sure), and ``morphology_doubtful`` when it is unsure of most
    (:data:`hemaseg.redcells.MOSTLY_UNSURE`: images unlike those it learned from).

    >>> s = red_cell_summary([{"n_red_cells": "2", "n_platelets": "1", "n_white_cell": "0"}],
    ...                      [{"equivalent_diameter_um": "7.0"}, {"equivalent_diameter_um": "8.0"}])
    >>> s["red_cells"], s["platelets_per_1000_red"], s["mean_diameter"], s["unit"]
    (2, 500.0, 7.5, 'um')
    """
    if not images or "n_red_cells" not in images[0]:
        return None
    number = lambda r, k: int(float(r.get(k) or 0))  # noqa: E731
    n_red = sum(number(r, "n_red_cells") for r in images)
    n_plt = sum(number(r, "n_platelets") for r in images)
    cut = sum(number(r, "n_cut_by_frame") for r in images)  # red cells and platelets left out of the counts
    white = sum(number(r, k) for r in images for k in r if k in ("n_white_cell", "n_cell"))
    unit = "um" if red and all(r.get("equivalent_diameter_um") for r in red) else "px"
    sizes = [float(r[f"equivalent_diameter_{unit}"]) for r in red if r.get(f"equivalent_diameter_{unit}")]
    per = lambda n: round(1000 * n / n_red, 2) if n_red else None  # noqa: E731
    morphology = [r["morphology"] for r in red if r.get("morphology")]
    unsure = unsure_share([float(r["morphology_confidence"]) for r in red if r.get("morphology_confidence") not in (None, "")])
    return {"red_cells": n_red, "platelets": n_plt, "cut_by_frame": cut, "platelets_per_1000_red": per(n_plt), "white_per_1000_red": per(white),
            "diameters": sizes, "unit": unit, "mean_diameter": round(sum(sizes) / len(sizes), 3) if sizes else None,
            "scale_estimated": unit == "um" and any(r.get("um_scale") == "estimated" for r in red),
            "morphology": morphology_grades(morphology) if morphology else None,
            "morphology_unsure": unsure, "morphology_doubtful": unsure is not None and unsure > MOSTLY_UNSURE}


def _csv_rows(path: Path, needed: tuple[str, ...], remedy: str) -> list[dict]:
    """The rows of a CSV hemaseg wrote, refused (naming the file and the remedy) when it is missing,
    unreadable or lacks a column of ``needed``."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read ({why(err)}); {remedy}") from err
    missing = [c for c in needed if c not in fields]
    if missing:
        raise DataError(f"{path}: not a complete hemaseg table (no column {', '.join(missing)}); {remedy}")
    if any(None in r for r in rows) or any(r.get(needed[-1]) is None for r in rows):
        raise DataError(f"{path}: rows of the wrong length (a damaged file); {remedy}")
    return rows


def _crop(image_path: str, cell: dict, size: int = 96) -> bytes | None:
    from PIL import Image

    from .data.contract import image_to_tensor, tensor_to_image
    from .data.io import read_image

    try:
        img = tensor_to_image(image_to_tensor(read_image(image_path)))
    except Exception:  # the gallery shows what it can; the table still counts the cell
        return None
    x1, y1, x2, y2 = (int(cell[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
    pad = max(x2 - x1, y2 - y1) // 8
    crop = img[max(0, y1 - pad): y2 + pad, max(0, x1 - pad): x2 + pad]
    pil = Image.fromarray(crop)
    pil.thumbnail((size, size))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def write_differential(results_dir: str | Path, per_type: int = 40) -> dict:
    """Write ``differential.html``, ``differential.csv`` and ``differential.json`` into a ``segment``
    folder and return the numbers."""
    from .data.io import csv_text, write_json, write_text

    root = Path(results_dir)
    page, d = differential_report(root, per_type)
    write_text(root / "differential.html", page)
    rows = [{"type": t, "count": n, "percent": round(d["percent"][t], 2)} for t, n in d["counts"].items()]
    write_text(root / "differential.csv", csv_text(rows, ["type", "count", "percent"]))
    red = {"red_cells": {k: v for k, v in d["red"].items() if k != "diameters"}} if d["red"] else {}
    write_json(root / "differential.json", {"counts": d["counts"], "percent": d["percent"], "total": d["total"],
                                            "lab": d["lab"], **red, "research_use_only": True})
    return d


SIZE_CAVEAT = ("Sizes come from each field's scale as read off its own cells: the mean diameter, the curve and the size "
               "classes (macrocyte, microcyte) cannot show a field whose red cells are all small or all large (microcyte "
               "recall 0.18 so, 0.53 with the true scale: docs/benchmarks.md). When red-cell size matters, segment "
               "with the camera's µm per pixel (hemaseg segment --pixel-size; in the station, the case's µm per "
               "pixel, entered before its images are added).")


def doubtful_morphology(unsure: float) -> str:
    """What the report says when the red-cell classifier is unsure of most of a case's red cells."""
    return (f"The red-cell classifier is unsure of {unsure:.0%} of these red cells (31% on images of the lab it learned "
            "from): these images are unlike its training images, and its classes and grades do not hold for them "
            "(on healthy donors of another lab it graded schistocytes 3+). Review the cells, or leave the grades out.")


def red_section(red: dict, images: list[dict]) -> tuple[str, str]:
    """The report's red cells and platelets (``red``: :func:`red_cell_summary`; ``images``: a row per field
    with its ``image``, ``n_red_cells``, ``n_platelets``, ``platelets_per_1000_red`` and ``smear_hint``):
    ratios, the morphology grades, the Price-Jones curve and mean diameter, counts per field."""
    rows = [{k: r.get(k) for k in ("image", "n_red_cells", "n_platelets", "platelets_per_1000_red", "smear_hint")} for r in images]
    unit = "µm" if red["unit"] == "um" else "px"
    text = (f"<p>{red['red_cells']} red cells and {red['platelets']} platelets: {red['platelets_per_1000_red']} platelets "
            f"and {red['white_per_1000_red']} white cells per 1000 red cells. Mean red-cell diameter "
            f"{red['mean_diameter']} {unit}."
            + (f" {red['cut_by_frame']} cells cut by the frame or partly under a white cell, with under {FRAME_SHARE:.0%} of a cell in view,"
               " are not counted."
               if red.get("cut_by_frame") else "") + "</p>")
    if red.get("morphology_doubtful"):
        text += f"<p><b>{doubtful_morphology(red['morphology_unsure'])}</b></p>"
    if red.get("scale_estimated"):
        text += f"<p>{SIZE_CAVEAT}</p>"
    curve = _img(histogram_png(red["diameters"], f"red-cell diameter ({unit})", bins=30), "Price-Jones curve") if red["diameters"] else ""
    if red.get("morphology"):
        graded = [{**r, "percent": f"{r['percent']:.1f}"} for r in red["morphology"] if r["cells"]]  # as in the tables of white cells
        text += (html_table(graded, (("morphology", "morphology"), ("cells", "red cells"), ("percent", "%"), ("grade", "ICSH grade")))
                 + f"<p>Classes of {sum(r['cells'] for r in red['morphology'])} red cells by an automatic classifier "
                 "(its accuracy per class is in docs/benchmarks.md), graded as ICSH 2015 recommends (Palmer et al.): "
                 "review before reporting.</p>")
    table = html_table(rows, (("image", "image"), ("n_red_cells", "red cells"), ("n_platelets", "platelets"),
                              ("platelets_per_1000_red", "platelets / 1000 red"), ("smear_hint", "smear")))
    return "Red cells and platelets", text + curve + table


def differential_report(results_dir: str | Path, per_type: int = 40) -> tuple[str, dict]:
    """The white-cell differential of a ``segment`` folder (and its red cells, with ``--red-cells``; only
    those without white-cell types) as one offline HTML page, plus its numbers."""
    d = differential(results_dir)
    sources = {Path(r["image"]).stem: r["image"] for r in d["images"]}
    sections = [("Research use only", "<p><b>Research use only.</b> Not for diagnosis. Types come from an automatic "
                 "classifier (its accuracy on other labs' images is in docs/benchmarks.md); review the gallery, "
                 "unidentified cells first.</p>")]
    if not d["typed"]:
        return html_page("Red cells and platelets", [*sections, red_section(d["red"], d["images"])]), d
    lab = d["lab"]
    five = [{"type": t, "count": n, "percent": f"{lab['five_part_percent'][t]:.1f}"} for t, n in lab["five_part"].items()]
    five += [{"type": "immature granulocytes", "count": lab["immature_granulocytes"], "percent": f"{lab['immature_granulocyte_percent']:.1f}"},
             {"type": "unidentified", "count": lab["unidentified"], "percent": ""}]
    sections.append(("Differential", html_table(five, (("type", "type"), ("count", "cells"), ("percent", "% of white cells")))
                     + f"<p>{lab['white_cells']} white cells in {len(d['images'])} images; erythroblasts "
                     f"{lab['erythroblasts']} ({lab['erythroblasts_per_100_wbc']:.1f} per 100 white cells); platelets "
                     f"(large ones and clumps found as cells) {lab['platelets']}.</p>"))
    rows = [{"type": t, "count": n, "percent": f"{d['percent'][t]:.1f}"} for t, n in d["counts"].items()]
    sections.append(("Every type", html_table(rows, (("type", "type"), ("count", "cells"), ("percent", "% of typed cells")))))
    if d["red"]:
        sections.append(red_section(d["red"], d["images"]))
    if d["nc_ratio"]:
        sections.append(("N:C ratio", _img(histogram_png(d["nc_ratio"], "nucleus / cytoplasm area"), "nucleus / cytoplasm area ratio per cell")))
    per_image = [{k: r.get(k) for k in r if k in ("image", "status", "cells") or k[2:] in d["counts"]} for r in d["images"]]
    cols = [("image", "image"), ("status", "status"), ("cells", "cells")] + [(f"n_{t}", t) for t in d["counts"]]
    sections.append(("Per image", html_table(per_image, cols)))
    for t in d["counts"]:
        members = [c for c in d["cells"] if c["type"] == t][:per_type]
        figs = []
        for c in members:
            png = _crop(sources.get(c["source"], ""), c)
            if png is not None:
                second = f"; {c['second_type']} {float(c['second_confidence']):.2f}" if c.get("second_type") else ""
                figs.append(_img(png, f"{c['source']} #{c['id']} ({c.get('top_type') or c['type']} "
                                      f"{float(c['type_confidence']):.2f}{second})"))
        if figs:
            sections.append((f"Gallery: {t} ({d['counts'][t]})", "".join(figs)))
    return html_page("White-cell differential", sections), d
