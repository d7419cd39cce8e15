import json

import jsonschema
import numpy as np
import pytest
import roifile
import tifffile
import torch
from skimage.draw import polygon2mask

from hemaseg.export import cell_polygon, qupath_features, write_imagej_rois, write_qupath_geojson
from hemaseg.predict import SegmentConfig
from hemaseg.segment import segment_files
from hemaseg.cells import Cells

from conftest import save_png
from test_tiling import Components, _disks, components

# What QuPath's GeoJSON import reads (qupath.lib.io.GsonTools): features with a polygon, an object
# type, a classification with a name and an RGB colour, numeric measurements, and for cells a nucleus.
RING = {"type": "array", "minItems": 4, "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}}
POLYGON = {"type": "object", "required": ["type", "coordinates"],
           "properties": {"type": {"const": "Polygon"}, "coordinates": {"type": "array", "minItems": 1, "items": RING}}}
QUPATH_SCHEMA = {
    "type": "object", "required": ["type", "features"],
    "properties": {"type": {"const": "FeatureCollection"}, "features": {"type": "array", "items": {
        "type": "object", "required": ["type", "geometry", "properties"],
        "properties": {
            "type": {"const": "Feature"}, "id": {"type": "string"}, "geometry": POLYGON, "nucleusGeometry": POLYGON,
            "properties": {"type": "object", "required": ["objectType", "classification"], "properties": {
                "objectType": {"enum": ["annotation", "detection", "cell", "tile"]},
                "classification": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"},
                    "color": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}, "minItems": 3, "maxItems": 3}}},
                "measurements": {"type": "object", "additionalProperties": {"type": "number"}}}}},
        "if": {"properties": {"properties": {"properties": {"objectType": {"const": "cell"}}}}},
        "then": {"required": ["nucleusGeometry"]}}}},
}


def _cells(h=200, w=240, n=12):
    image, _ = _disks(h, w, n, seed=1)
    result = components(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    return Cells.from_result(result, h, w)


def _raster(poly: np.ndarray, shape) -> np.ndarray:
    """Pixels whose centre lies inside a polygon in pixel-corner coordinates."""
    return polygon2mask(shape, np.stack([poly[:, 1] - 0.5, poly[:, 0] - 0.5], axis=1))


def test_polygons_trace_the_masks():
    cells = _cells()
    dense = cells.dense()
    for i, (box, m) in enumerate(zip(cells.boxes, cells.masks)):
        r = _raster(cell_polygon(m, box), dense.shape[1:])
        iou = (r & (dense[i] > 0)).sum() / (r | (dense[i] > 0)).sum()
        assert iou > 0.9, (i, iou)
    assert cell_polygon(np.zeros((3, 3), bool), (0, 0, 3, 3)).shape == (0, 2)


def test_imagej_roi_zip_opens_with_roifile(tmp_path):
    cells = _cells()
    path = write_imagej_rois(tmp_path / "rois.zip", cells, ["cell"] * len(cells))
    rois = roifile.roiread(path)
    assert len(rois) == len(cells) == 12
    assert [r.name for r in rois[:2]] == ["0001-cell", "0002-cell"]
    dense = cells.dense()
    for roi, mask in zip(rois, dense):
        r = _raster(roi.coordinates(), mask.shape)
        assert (r & (mask > 0)).sum() / (r | (mask > 0)).sum() > 0.9
    empty = write_imagej_rois(tmp_path / "none.zip", Cells(10, 10), [])
    import zipfile

    assert zipfile.ZipFile(empty).namelist() == []


def test_qupath_geojson_follows_the_schema_with_cells_nuclei_and_measurements(tmp_path):
    cells = _cells()
    cells.nuclei = [np.zeros_like(m) for m in cells.masks]
    box = cells.boxes[0]
    cells.nuclei[0][2:-2, 2:-2] = cells.masks[0][2:-2, 2:-2]  # cell 1 has a nucleus
    rows = [{"id": i + 1, "area_px": int(m.sum()), "class": "cell", "type": "lymphocyte" if i == 0 else None}
            for i, m in enumerate(cells.masks)]
    path = write_qupath_geojson(tmp_path / "a.geojson", cells, ["white_cell"] * len(cells), rows)
    data = json.loads(path.read_text())
    jsonschema.validate(data, QUPATH_SCHEMA)
    first, second = data["features"][:2]
    assert first["properties"]["objectType"] == "cell" and "nucleusGeometry" in first
    assert first["properties"]["classification"]["name"] == "lymphocyte"
    assert second["properties"]["objectType"] == "detection" and second["properties"]["classification"]["name"] == "white_cell"
    assert first["properties"]["measurements"] == {"area_px": float(cells.masks[0].sum())}
    ring = np.array(first["geometry"]["coordinates"][0])
    assert (ring[0] == ring[-1]).all() and ring[:, 0].min() >= box[0] and ring[:, 0].max() <= box[2]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "FeatureCollection", "features": [{**first, "nucleusGeometry": None}]}, QUPATH_SCHEMA)
    assert qupath_features(Cells(5, 5), []) == {"type": "FeatureCollection", "features": []}


def test_segment_writes_every_export(tmp_path):
    image, truth = _disks(300, 320, 30, seed=2)
    path = save_png(tmp_path / "a field.png", image)
    segment_files([path], Components(), tmp_path / "out", SegmentConfig(exports=("imagej", "qupath", "tiff")),
                  progress=False, log=lambda s: None)
    labels = tifffile.imread(tmp_path / "out" / "a field_labels.tif")
    assert labels.dtype == np.uint16 and labels.max() == truth.max() == 30
    assert len(roifile.roiread(tmp_path / "out" / "a field_rois.zip")) == 30
    data = json.loads((tmp_path / "out" / "a field.geojson").read_text())
    jsonschema.validate(data, QUPATH_SCHEMA)
    assert len(data["features"]) == 30 and "area_px" in data["features"][0]["properties"]["measurements"]
    with pytest.raises(ValueError, match="unknown export"):
        SegmentConfig(exports=("shapefile",))
