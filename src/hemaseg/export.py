"""Hand the cells to the tools labs already use: ImageJ/Fiji ROI sets and QuPath GeoJSON (the label
TIFF napari opens and the COCO JSON are written by :mod:`hemaseg.segment`).

Outlines are polygons traced around each cell's mask (:func:`cell_polygon`), in image coordinates
whose origin is the top-left *corner* of the first pixel - the convention of ImageJ and QuPath (pixel
``(x, y)`` spans ``[x, x+1) x [y, y+1)``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.measure import find_contours

from .data.io import atomic_write, write_text
from .cells import Cells
from .viz import class_colour


def cell_polygon(mask: np.ndarray, box) -> np.ndarray:
    """Outline (``K x 2`` float ``x, y``, not repeated at the end) of the largest part of ``mask``
    (``bool``, the size of the ``XYXY`` ``box``), traced between inside and outside pixels.

    >>> sq = np.ones((2, 3), bool)
    >>> poly = cell_polygon(sq, (10, 20, 13, 22))
    >>> poly.min(axis=0).tolist(), poly.max(axis=0).tolist()  # the pixel edges, half a pixel cut at the corners
    ([10.0, 20.0], [13.0, 22.0])
    """
    contours = find_contours(np.pad(np.asarray(mask, float), 1), 0.5)
    if not contours:
        return np.zeros((0, 2))
    c = max(contours, key=len)[:-1]  # find_contours closes the ring; (row, col) of the padded crop
    return np.stack([c[:, 1] - 0.5 + box[0], c[:, 0] - 0.5 + box[1]], axis=1)


def write_imagej_rois(path: str | Path, cells: Cells, classes: Sequence[str]) -> Path:
    """An ImageJ/Fiji ROI set (``.zip``, one polygon ROI per cell named ``ID-CLASS``; open with the ROI
    Manager or ``roifile``)."""
    import roifile

    rois = []
    for i, (box, m) in enumerate(zip(cells.boxes, cells.masks)):
        roi = roifile.ImagejRoi.frompoints(cell_polygon(m, box))
        roi.name = f"{i + 1:04d}-{classes[i]}"
        rois.append(roi)
    if not rois:  # ImageJ opens an empty zip as an empty ROI set
        return atomic_write(path, lambda t: _empty_zip(t))
    return atomic_write(path, lambda t: roifile.roiwrite(t, rois, mode="w"))


def _empty_zip(path: Path) -> None:
    import zipfile

    zipfile.ZipFile(path, "w").close()


def _ring(poly: np.ndarray) -> list[list[float]]:
    pts = [[round(float(x), 3), round(float(y), 3)] for x, y in poly]
    return pts + pts[:1]


def qupath_features(cells: Cells, classes: Sequence[str], measurements: Sequence[dict] | None = None) -> dict:
    """A GeoJSON ``FeatureCollection`` QuPath imports (File > Import objects): one detection per cell,
    or a *cell* object with its ``nucleusGeometry`` where the cell has a nucleus; classification = class
    (or the white-cell ``type`` of its measurement row; a red cell's ``morphology`` as a QuPath derived
    class, ``red_cell: target``), numeric measurement columns as measurements."""
    features = []
    for i, (box, m) in enumerate(zip(cells.boxes, cells.masks)):
        row = dict(measurements[i]) if measurements is not None else {}
        name = row.get("type") or (f"{classes[i]}: {row['morphology']}" if row.get("morphology") else classes[i])
        props = {"objectType": "detection", "name": f"{i + 1}",
                 "classification": {"name": name, "color": list(class_colour(int(cells.labels[i])))},
                 "measurements": {k: float(v) for k, v in row.items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "id"}}
        feature = {"type": "Feature", "id": str(uuid.UUID(int=i + 1)),
                   "geometry": {"type": "Polygon", "coordinates": [_ring(cell_polygon(m, box))]}, "properties": props}
        nucleus = cells.nuclei[i] if cells.nuclei is not None else None
        if nucleus is not None and nucleus.any():
            props["objectType"] = "cell"
            feature["nucleusGeometry"] = {"type": "Polygon", "coordinates": [_ring(cell_polygon(nucleus, box))]}
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def write_qupath_geojson(path: str | Path, cells: Cells, classes: Sequence[str], measurements: Sequence[dict] | None = None) -> Path:
    """:func:`qupath_features` written as ``.geojson``."""
    return write_text(path, json.dumps(qupath_features(cells, classes, measurements)))
