"""White cells in whole smear fields: how models trained with and without field augmentation find and
outline held-out white cells placed in whole fields, and what it costs them on the held-out crops.

    .venv/bin/python benchmarks/whole_fields.py --zheng ../shared/data/wbc-zheng2018 \
        --split RUN/split.json --model crops=RUN_A/best.pt --model fields=RUN_B/best.pt [--work runs/fields] [--float32-too] [--rim 20]

The test fields are built from the *held-out* cells of ``split.json`` only (its ``val`` list), each at its
dataset's own scale: 640x480 fields for dataset1 (white cells ~75 px wide), 1280x960 for dataset2
(~146 px: the same field of view at about twice the magnification), 4 to 8 white cells per field, cut
out of their crops with their nuclei and ``--rim`` px of their crop (default 3, as the training's fields;
the paste's seam lies that far outside the true outline, and a head trained on such fields can learn it:
20 puts it about 10 px out at both datasets' model scale) and pasted among painted red cells (25-50%
cover) and platelets in the colours of their own crop (hemaseg.data.fields). A work folder keeps the fields
it was given (``fields.json``): another ``--rim``, ``--n`` or ``--seed`` needs another ``--work``. A third set is fully synthetic: 640x480 smears painted by hemaseg.data.synthetic at dataset1's scale
(white cells 68-88 px, red cells 34-42 px, 1-3 white cells among 60-90 red cells and platelets), only the
white cells annotated (SYNTH_FIELDS; a white-cell appearance no model here trained on unless said).
The fields are written in hemaseg's instance
layout under ``WORK/fields-datasetN``, so ``hemaseg evaluate --data WORK/fields-dataset1 --model M``
reproduces any row (with ``--diameter`` for a model trained at a cell diameter: each set is then seen
at its dataset's diameter as the model measured it, ``data_diameters`` of the checkpoint; the painted
smears at that of ``synthetic-white``). Scoring is class-agnostic (hemaseg.evaluation), nuclei by the model's own
learned nuclei.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hemaseg.data.contract import masks_to_labels, tensor_to_image
from hemaseg.data.dataset import CellDataset, select_refs
from hemaseg.data.fields import FieldConfig, compose_field, crop_tones, cut_cells
from hemaseg.data.formats import open_dataset
from hemaseg.data.synthetic import SynthConfig, write_dataset, write_sample
from hemaseg.evaluation import evaluate_method
from hemaseg.model import data_diameters
from hemaseg.predict import ModelMethod, SegmentConfig

SIZES = {"dataset1": (480, 640), "dataset2": (960, 1280)}
TEST_FIELDS = FieldConfig(cells=(4, 8), coverage=(0.25, 0.5), overhang=0.3)
SYNTH_FIELDS = SynthConfig.wbc_field(480, 640)


def write_fields(source, refs, out: Path, n: int, size: tuple[int, int], seed: int, rim: int = 3) -> Path:
    """``n`` fields of ``size`` from the cells of ``refs``, each cut with ``rim`` px of its own crop
    around it (hemaseg.data.fields.cut_cells); field k uses the colours of a crop drawn for it."""
    ds = CellDataset(source, refs)
    pairs = [ds[i] for i in range(len(ds))]
    cutouts = [cut_cells(image, target, rim=rim) for image, target in pairs]
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        chosen = rng.choice(len(pairs), size=int(rng.integers(TEST_FIELDS.cells[0], TEST_FIELDS.cells[1] + 1)), replace=False)
        cells = [c for i in chosen for c in cutouts[i]]
        image, target = compose_field(rng, cells, crop_tones(*pairs[int(chosen[0])]), TEST_FIELDS, size=size)
        masks = target["masks"].numpy()
        nuclei = (target["nuclei"].numpy() * np.arange(1, len(masks) + 1)[:, None, None]).max(axis=0) if len(masks) else None
        write_sample(out, f"field_{k:03d}", tensor_to_image(image), masks_to_labels(masks), ["cell"] * len(masks), nuclei)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zheng", type=Path, default=Path("../shared/data/wbc-zheng2018"))
    ap.add_argument("--split", type=Path, required=True, help="split.json of the runs compared (their held-out images)")
    ap.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT, repeatable")
    ap.add_argument("--work", type=Path, default=Path("runs/fields"))
    ap.add_argument("--n", type=int, default=12, help="fields per dataset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rim", type=int, default=3, help="px of its own crop kept around each pasted cell, fading out "
                    "(training's fields keep 3; a wider rim puts the paste's seam farther from the true outline)")
    ap.add_argument("--float32-too", action="store_true", help="also score each model in float32 (segment --no-amp)")
    args = ap.parse_args()

    models = dict(m.split("=", 1) for m in args.model)
    rows = []

    def score(label, src, refs, key):
        for (model_name, path), amp in ((m, a) for m in models.items() for a in ((True, False) if args.float32_too else (True,))):
            # a model trained at a cell diameter sees each set at its dataset's measured diameter
            cfg = SegmentConfig(diameter=data_diameters(path).get(key), amp=amp)
            method = ModelMethod.from_checkpoint(path, cfg)
            s = evaluate_method(method, src, refs, cfg, progress=False).summary
            m = s["matching"]["0.50"]
            row = {"model": model_name + ("" if amp else " (float32)"), "data": label, "images": s["images"],
                   "true cells": m["tp"] + m["fn"], "F1@0.5": s["f1_50"], "precision": s["precision_50"],
                   "recall": s["recall_50"], "matched IoU": m["mean_matched_iou"], "image IoU": s["mean_iou"],
                   "nucleus Dice": s.get("nucleus_dice", float("nan")), "s/image": s["seconds_per_image"]}
            rows.append(row)
            print(json.dumps(row), flush=True)

    for name in ("dataset1", "dataset2"):
        source = open_dataset(args.zheng / name)
        held_out = select_refs(source.refs, source.root, args.split, "val")
        out = args.work / f"fields-{name}"
        made = {"n": args.n, "seed": args.seed, "rim": args.rim}
        if not (out / "images").is_dir():
            write_fields(source, held_out, out, args.n, SIZES[name], args.seed, args.rim)
            (out / "fields.json").write_text(json.dumps(made))
        else:  # folders written before the rim was an option: 12 fields, seed 0, rim 3
            found = json.loads((out / "fields.json").read_text()) if (out / "fields.json").exists() else {"n": 12, "seed": 0, "rim": 3}
            if found != made:
                raise SystemExit(f"{out}: its fields were made with {found}, not {made}: use another --work")
        fields = open_dataset(out)
        score(f"{name} fields", fields, fields.refs, name)
        score(f"{name} crops", source, held_out, name)
    synth = args.work / "fields-synthetic"
    if not (synth / "images").is_dir():
        write_dataset(synth, args.n, SYNTH_FIELDS, seed=args.seed, annotate={"white_cell": "cell"})
    synthetic = open_dataset(synth)
    score("synthetic fields", synthetic, synthetic.refs, "synthetic-white")
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
