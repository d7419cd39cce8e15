"""How low the red-cell count error can go against Chula RBC-12's points, on its *training* fields only
(issue 21's count target, <= 5% mean error per field): whether an object-level filter learned from the
points themselves - "would an expert have pointed at this found cell?" - brings the count closer.

    .venv/bin/python benchmarks/count_floor.py      # about 4 min on the 2-core CPU

On the training fields pointed throughout (benchmarks/frame_share.py: at least 90% of the whole found
red cells hold a point), every whole found red cell is described by its shape and stain (area and stain
density against the field's median cell, darkest pixel, purple, solidity, elongation) and, in a second
model, also by the bundled morphology classifier's 1280 features of its crop. A logistic regression
learns, field-wise 5-fold cross-validated, the chance that the experts left the cell without a point
(their omissions, artefacts, a cell split in two); cells above a threshold are not counted. It prints,
per model and threshold, the pointed and unpointed cells taken out and the mean count error (and bias)
of ``segment``'s count (:func:`hemaseg.redcells.counted_cells`) per field, beside the count as it is and
the count with the best constant correction (the error left once the bias is gone: the fields' own
scatter). Before that: per field, the share of the counted cut cells the annotators pointed at and the
whole found cells without a point, and how many whole cells with and without a point the bundled
classifier calls schistocytes.

Chula RBC-12 (Naruenatthanaset et al. 2021, MIT).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from skimage.measure import regionprops
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).parent))
from frame_share import pointed_throughout, red_cells, training_fields, truths_per_cell  # noqa: E402

from hemaseg.celltypes import context_crops, prepare  # noqa: E402
from hemaseg.redcells import RED_CELL, bundled_morphology, counted_cells, cut_by_frame, stain_maps  # noqa: E402
from hemaseg.scale import RED_CELL_UM  # noqa: E402

FOLDS = 5


def describe(rgb: np.ndarray, red, red_px: float, clf) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(shape_stain, features, calls)`` per found red cell: ``N x 6`` (area and mean density against the
    field's median whole cell, darkest density against that median, mean purple, solidity, elongation),
    ``N x 1280`` (the morphology classifier's features of the cell's crop, one view) and its class, as
    ``segment`` calls it."""
    lab = red.label_image()
    density, purple = stain_maps(rgb)
    props = regionprops(lab, intensity_image=np.dstack([density, purple]))
    cut = cut_by_frame(red)
    area = np.array([q.area for q in props], np.float64)
    mean_d = np.array([q.intensity_mean[0] for q in props])
    a0, d0 = np.median(area[~cut]), np.median(mean_d[~cut])
    shape = np.array([[q.area / a0, q.intensity_mean[0] / d0, q.intensity_max[0] / d0, q.intensity_mean[1], q.solidity,
                       q.axis_major_length / max(q.axis_minor_length, 1.0)] for q in props])
    crops = context_crops(rgb, [q.centroid for q in props], RED_CELL_UM / red_px, clf.cfg)
    with torch.no_grad():
        feats = clf.net.body.features(prepare(torch.as_tensor(crops), clf.cfg)).numpy()
    return shape, feats, [c.top for c in clf.calls(clf.probabilities(crops))]


def main() -> None:
    torch.set_num_threads(2)
    clf = bundled_morphology()
    fields = []
    for _, rgb, white, red_px, pts in training_fields():
        red = red_cells(rgb, white, red_px)
        if not pointed_throughout(red, pts):
            continue
        shape, feats, calls = describe(rgb, red, red_px, clf)
        fields.append({"per": truths_per_cell(red, pts[:, 1], pts[:, 0]), "cut": cut_by_frame(red), "points": len(pts),
                       "counted": counted_cells(red, [RED_CELL] * len(red)), "shape": shape, "both": np.hstack([shape, feats]),
                       "calls": np.array(calls)})
    fold = np.random.default_rng(0).permutation(len(fields)) % FOLDS
    base = np.array([(f["counted"].sum() - f["points"]) / f["points"] for f in fields])
    whole = sum(int((~f["cut"]).sum()) for f in fields)
    unpointed = sum(int(((f["per"] == 0) & ~f["cut"]).sum()) for f in fields)
    print(f"{len(fields)} training fields pointed throughout; {whole} whole found cells, {unpointed} without a point")
    pointed_cut = [(f["per"][f["counted"] & f["cut"]] > 0).mean() for f in fields if (f["counted"] & f["cut"]).any()]
    print("share of the counted cut cells the annotators pointed at, per field: least / median / most",
          " / ".join(f"{v:.2f}" for v in np.percentile(pointed_cut, [0, 50, 100])))
    unpointed_per_field = [int(((f["per"] == 0) & ~f["cut"]).sum()) for f in fields]
    print("whole found cells without a point, per field: median / most", int(np.median(unpointed_per_field)), "/", max(unpointed_per_field))
    schisto = [sum(int(((f["calls"] == "schistocyte") & ~f["cut"] & sel(f)).sum()) for f in fields)
               for sel in (lambda f: f["per"] > 0, lambda f: f["per"] == 0)]
    print(f"whole cells called schistocyte: {schisto[0]} holding a point, {schisto[1]} without one")
    print(f"as it is: mean count error {np.abs(base).mean():.4f} (bias {base.mean():+.4f}); "
          f"with the best constant correction: {np.abs(base - np.median(base)).mean():.4f}")
    print("model | C | threshold | pointed taken out | unpointed taken out | mean count error | bias")
    for kind, cs in (("shape", (0.1, 1.0)), ("both", (0.001, 0.01))):
        for c in cs:
            chance = [np.zeros(len(f["per"])) for f in fields]
            for k in range(FOLDS):
                train = [f for f, g in zip(fields, fold) if g != k]
                x = np.vstack([f[kind][~f["cut"]] for f in train])
                y = np.concatenate([f["per"][~f["cut"]] == 0 for f in train])
                model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)).fit(x, y)
                for i in np.nonzero(fold == k)[0]:
                    chance[i] = model.predict_proba(fields[i][kind])[:, 1]
            for t in (0.3, 0.5, 0.7):
                out_p = out_u = 0
                err = []
                for f, p in zip(fields, chance):
                    drop = (p > t) & ~f["cut"]
                    out_p += int((drop & (f["per"] > 0)).sum())
                    out_u += int((drop & (f["per"] == 0)).sum())
                    err.append(((f["counted"] & ~drop).sum() - f["points"]) / f["points"])
                err = np.array(err)
                print(f"{kind} | {c} | {t} | {out_p} | {out_u} | {np.abs(err).mean():.4f} | {err.mean():+.4f}", flush=True)


if __name__ == "__main__":
    main()
