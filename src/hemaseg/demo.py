"""The built-in default job (``hemaseg demo``, ``make demo``): the bundled model on painted whole fields
and on real BCCD fields shipped with the package (or on the user's images), with the white-cell types
against the experts' where known, and - on request - a short training on painted smears.

Steps: :func:`demo_jobs` (what to segment, painting the fields) -> :func:`run_job` (segment, types,
score against the truth) for each; :func:`train_demo`. Everything said goes through ``log``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .data.io import DataError
from .metrics import format_score

DEMO_FIELDS = Path(__file__).parent / "demo_data" / "bccd"  # real fields shipped for the demo (MIT), held out of training
OUTPUTS = ("fields", "segment", "segment-real", "run")  # what a demo writes in its folder


@dataclass(frozen=True)
class DemoJob:
    """Images to segment (``inputs``: files or folders) into ``out``; ``truth``, a dataset of them with
    true cells (and perhaps the experts' ``types.csv``), or None; ``what``, how the log names them."""

    inputs: list[Path]
    truth: Path | None
    out: Path
    what: str


def clear_outputs(out: Path) -> None:
    """Remove what an earlier demo wrote in ``out`` (its own folders only)."""
    for sub in OUTPUTS:
        if (out / sub).exists():
            shutil.rmtree(out / sub)


def demo_jobs(images: list[Path] | None, out: Path, fields: int = 6, log: Callable[[str], None] = print) -> list[DemoJob]:
    """The user's ``images``, or ``fields`` painted 640x480 fields (written to ``out/fields``, white cells
    outlined in their truth) and the real fields of :data:`DEMO_FIELDS`."""
    if images:
        return [DemoJob(list(images), None, out / "segment", "your images")]
    from .data.synthetic import SynthConfig, write_dataset

    truth = write_dataset(out / "fields", fields, SynthConfig.wbc_field(480, 640), seed=2024, annotate={"white_cell": "cell"})
    log(f"painted {fields} synthetic smear fields (640x480, white cells outlined in the truth) in {truth}")
    return [DemoJob([truth / "images"], truth, out / "segment", "painted fields"),
            DemoJob([DEMO_FIELDS], DEMO_FIELDS, out / "segment-real", "real BCCD fields (MIT; see their README)")]


def run_job(job: DemoJob, method, cfg, classifier=None, log: Callable[[str], None] = print, progress: bool = False) -> None:
    """Segment the job's images (:func:`hemaseg.segment.segment_files`), say the types found
    (:func:`type_lines`, with a ``classifier``) and, where there is a truth, the scores against it."""
    from .data.formats import list_images, open_dataset
    from .evaluation import evaluate_method
    from .segment import segment_files

    files = list_images(job.inputs)
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, job.inputs))}")
    summary = segment_files(files, method, job.out, cfg, progress=progress, log=log,
                            keep_cells=job.truth is not None, classifier=classifier)
    count = lambda key: sum(int(r.get(key) or 0) for r in summary.rows)  # noqa: E731
    white = sum(count(f"n_{c}") for c in method.classes)
    red = f", {count('n_red_cells')} red cells and {count('n_platelets')} platelets" if "n_red_cells" in summary.rows[0] else ""
    log(f"\n{job.what}: {white} white cells{red} in {len(files)} images -> {job.out} "
        f"(NAME_overlay.png, NAME_cells.csv, summary.csv, predictions_coco.json)")
    if classifier is not None:
        for line in type_lines(job.out, job.truth):
            log(line)
    if job.truth is not None:
        source = open_dataset(job.truth)
        s = evaluate_method(method, source, source.refs, cfg, progress=False, predictions=summary.cells).summary
        log(f"against the truth: F1@0.5 {format_score(s['f1_50'], 3)}, mean IoU {format_score(s['mean_iou'], 3)}, "
            f"nucleus Dice {format_score(s.get('nucleus_dice', float('nan')), 3)}\n")


def type_lines(results: Path, truth: Path | None) -> list[str]:
    """The differential of a segment folder (written: :func:`hemaseg.report.write_differential`) in one
    line and, where the images' expert types are known (``types.csv`` beside them), one line per image
    with its types against the experts'."""
    from .celltypes import to_level
    from .classify import read_type_labels
    from .report import write_differential

    d = write_differential(results)
    lines = ["types (research use only): " + ", ".join(f"{t} {n}" for t, n in d["counts"].items() if n)
             + f" -> {results / 'differential.html'}"]
    if truth is None or not (truth / "types.csv").is_file():
        return lines
    experts = read_type_labels(truth / "types.csv")
    for row in d["images"]:
        stem = Path(row["image"]).stem
        ours = sorted(c["type"] for c in d["cells"] if c["source"] == stem)
        theirs = sorted(experts.get(stem, "").split("|"))
        said = sorted(next((lab for lab in theirs if to_level(t, lab) == lab), t) for t in ours)  # at the experts' level
        lines.append(f"  {stem}: {', '.join(ours) or 'none'} (experts: {', '.join(theirs)})"
                     + (" - as the experts" if said == theirs else ""))
    return lines


def train_demo(out: Path, epochs: int = 12, log: Callable[[str], None] = print, progress: bool = False):
    """Train a model on 48 painted 160x160 smears into ``out/run/model`` (the CPU training demo); says
    the best epoch's validation scores. Returns the :class:`hemaseg.train.TrainResult`."""
    from .data.synthetic import SynthConfig, write_dataset
    from .train import TrainConfig, train

    data = write_dataset(out / "run" / "data", 48, SynthConfig(height=160, width=160), seed=0)
    result = train(TrainConfig(data=str(data), out=str(out / "run" / "model"), epochs=epochs, batch_size=4, warmup_steps=30),
                   progress=progress, log=log)
    best = result.best_metrics
    log(f"trained on 48 synthetic smears: best epoch {result.best_epoch}, validation mean IoU "
        f"{format_score(best.get('val_mean_iou', float('nan')), 3)}, F1@0.5 {format_score(best.get('val_f1_50', float('nan')), 3)} "
        f"-> {result.out / 'best.pt'}")
    return result
