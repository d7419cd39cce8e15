"""Box annotations (hemaseg.data.boxes): VOC and YOLO read as XYXY boxes; bad boxes named."""

import numpy as np
import pytest

from hemaseg.data.boxes import box_iou, read_voc, read_yolo
from hemaseg.data.io import DataError

VOC = """<annotation><size><width>640</width><height>480</height><depth>3</depth></size>
<object><name>WBC</name><bndbox><xmin>260</xmin><ymin>177</ymin><xmax>491</xmax><ymax>376</ymax></bndbox></object>
<object><name>RBC</name><bndbox><xmin>0</xmin><ymin>336</ymin><xmax>84</xmax><ymax>435</ymax></bndbox></object>
<object><name>RBC</name><bndbox><xmin>504</xmin><ymin>337</ymin><xmax>504</xmax><ymax>337</ymax></bndbox></object>
</annotation>"""


def test_voc_boxes_sizes_and_whole_cells(tmp_path):
    f = tmp_path / "a.xml"
    f.write_text(VOC)
    boxes, size = read_voc(f)
    assert size == (480, 640)
    assert boxes.names == ("WBC", "RBC")  # the box of no area is skipped
    assert boxes.xyxy.tolist() == [[260, 177, 491, 376], [0, 336, 84, 435]]
    assert boxes.inside(*size).tolist() == [True, False]  # the red cell touches the left border
    assert boxes.only({"WBC"}).xyxy.shape == (1, 4)


def test_yolo_boxes_in_pixels_and_bad_lines_named(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("0 0.5 0.5 0.5 0.5\n\n1 0.25 0.25 0.1 0.2\n")
    b = read_yolo(f, ["cell", "red_cell"], 100, 200)
    assert b.names == ("cell", "red_cell")
    np.testing.assert_allclose(b.xyxy, [[50, 25, 150, 75], [40, 15, 60, 35]])
    f.write_text("0 0.5 nan 0.5 0.5\n")
    with pytest.raises(DataError, match="c.txt: line 1: not a box"):
        read_yolo(f, ["cell"], 100, 200)
    f.write_text("7 0.5 0.5 0.5 0.5\n")
    with pytest.raises(DataError, match="c.txt:1: class 7 is not in the 1 classes"):
        read_yolo(f, ["cell"], 100, 200)
    f.write_text("0 0.5\n")
    with pytest.raises(DataError, match="expected 'class cx cy w h'"):
        read_yolo(f, ["cell"], 100, 200)


def test_a_broken_voc_file_is_named(tmp_path):
    f = tmp_path / "b.xml"
    f.write_text("<annotation><object>")
    with pytest.raises(DataError, match="b.xml: not a readable Pascal VOC file"):
        read_voc(f)


def test_box_iou_of_empty_sets():
    assert box_iou(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)
