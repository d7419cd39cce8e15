"""Tables and one self-contained HTML page (inline CSS, images as data URIs: opens with no network)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from datetime import datetime, UTC

from .evaluation import Evaluation

COMPARE_COLUMNS = (("method", "method"), ("images", "images"), ("mean_iou", "mean IoU"), ("mean_dice", "Dice"),
                   ("f1_50", "F1@0.5"), ("pq_50", "PQ@0.5"), ("mask_AP", "mask AP"), ("mask_AP50", "mask AP50"),
                   ("box_AP", "box AP"), ("nucleus_dice", "nucleus Dice"), ("seconds_per_image", "s/image"))


def compare_rows(evals: Sequence[Evaluation]) -> list[dict]:
    """One row per method with the summary metrics of :data:`COMPARE_COLUMNS`."""
    return [{k: ev.summary.get(k) for k, _ in COMPARE_COLUMNS} for ev in evals]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return "" if v is None else str(v)


def markdown_table(rows: list[dict], columns=COMPARE_COLUMNS) -> str:
    head = "| " + " | ".join(t for _, t in columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |\n" for r in rows)


def _html_table(rows: list[dict], columns) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for k, _ in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """A complete HTML document from ``(heading, inner HTML)`` sections; no external resources."""
    css = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
           "figure{display:inline-block;margin:6px}img{image-rendering:pixelated;max-width:100%}"
           "figcaption{font-size:small;color:#555}")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(f"<h2>{html.escape(h)}</h2>{inner}" for h, inner in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1><p>hemaseg, {stamp}</p>{body}</body></html>\n")


def evaluation_sections(evals: Sequence[Evaluation], figures: dict[str, bytes], curves: bytes | None = None) -> list[tuple[str, str]]:
    """Report sections: the comparison table, matching by IoU threshold per method, curves, figures."""
    sections = [("Summary", _html_table(compare_rows(evals), COMPARE_COLUMNS))]
    cols = (("thresh", "IoU ≥"), ("tp", "TP"), ("fp", "FP"), ("fn", "FN"), ("precision", "precision"),
            ("recall", "recall"), ("f1", "F1"), ("mean_matched_iou", "matched IoU"), ("panoptic_quality", "PQ"))
    for ev in evals:
        sections.append((f"Instance matching: {ev.method}", _html_table(list(ev.summary["matching"].values()), cols)))
    if curves:
        sections.append(("Training curves", _img(curves, "loss and validation scores per epoch")))
    if figures:
        sections.append(("Worst and best images", "".join(_img(png, name) for name, png in figures.items())))
    return sections
