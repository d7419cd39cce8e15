"""Box annotations of whole fields and crops: Pascal VOC XML and YOLO text, read as named XYXY boxes.

Sources that box every cell but outline none (BCCD's VOC files, the OI-PBC YOLO labels of the PBC crops)
are read here once: :func:`read_voc` and :func:`read_yolo` return a :class:`Boxes` record (``XYXY`` float
pixels, ``x2``/``y2`` exclusive as in the data contract, and each box's class name). Errors name the file.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import DataError, why

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Boxes:
    """``xyxy`` ``Float[N, 4]`` pixel boxes and their ``names`` (class of each box)."""

    xyxy: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def only(self, keep) -> Boxes:
        """The boxes whose class is in ``keep`` (a set of names).

        >>> b = Boxes(np.array([[0, 0, 2, 2], [1, 1, 3, 3.]]), ("RBC", "WBC"))
        >>> b.only({"WBC"}).xyxy.tolist()
        [[1.0, 1.0, 3.0, 3.0]]
        """
        idx = [i for i, n in enumerate(self.names) if n in keep]
        return Boxes(self.xyxy[idx].reshape(-1, 4), tuple(self.names[i] for i in idx))

    def inside(self, height: int, width: int, margin: float = 1.0) -> np.ndarray:
        """``bool[N]``: boxes at least ``margin`` px from every image border (whole cells, not cut by the frame).

        >>> Boxes(np.array([[0, 5, 4, 9], [2, 2, 5, 5.]]), ("a", "b")).inside(10, 10).tolist()
        [False, True]
        """
        b = self.xyxy
        return (b[:, 0] >= margin) & (b[:, 1] >= margin) & (b[:, 2] <= width - margin) & (b[:, 3] <= height - margin)


def _finite_box(values: list[float], path: Path, where: str) -> list[float] | None:
    """The box, or None for a box of no area (skipped, with a warning); non-finite or inverted: an error."""
    if not all(math.isfinite(v) for v in values) or values[2] < values[0] or values[3] < values[1]:
        raise DataError(f"{path}: {where}: not a box (x1 <= x2, y1 <= y2, finite): {values}")
    if values[2] == values[0] or values[3] == values[1]:
        log.warning("%s: %s: a box of no area skipped: %s", path, where, values)
        return None
    return values


def read_voc(path: str | Path) -> tuple[Boxes, tuple[int, int]]:
    """A Pascal VOC annotation: its boxes (``xmin, ymin`` inclusive, ``xmax, ymax`` as written: exclusive
    ends) and the image's ``(height, width)`` from ``<size>``."""
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
        size = (int(root.findtext("size/height")), int(root.findtext("size/width")))
    except (OSError, ET.ParseError, TypeError, ValueError) as err:
        raise DataError(f"{p}: not a readable Pascal VOC file with a <size> ({why(err)})") from err
    boxes, names = [], []
    for k, obj in enumerate(root.iter("object")):
        try:
            values = [float(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError) as err:
            raise DataError(f"{p}: object {k + 1} has no numeric <bndbox>") from err
        box = _finite_box(values, p, f"object {k + 1}")
        if box is not None:
            boxes.append(box)
            names.append((obj.findtext("name") or "").strip())
    return Boxes(np.array(boxes, np.float64).reshape(-1, 4), tuple(names)), size


def read_yolo(path: str | Path, classes: list[str], height: int, width: int) -> Boxes:
    """YOLO labels (``class cx cy w h`` per line, normalised to the image) of a ``height x width`` image,
    class ids named by ``classes`` (``labels/classes.txt``).

    >>> import tempfile, os
    >>> f = Path(tempfile.mkdtemp()) / "a.txt"; _ = f.write_text("1 0.5 0.5 0.2 0.4\\n")
    >>> b = read_yolo(f, ["red_cell", "platelet"], 100, 200); b.names, b.xyxy.tolist()
    (('platelet',), [[80.0, 30.0, 120.0, 70.0]])
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{p}: cannot read YOLO labels ({why(err)})") from err
    boxes, names = [], []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            c, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:5])
        except (ValueError, IndexError) as err:
            raise DataError(f"{p}:{n}: expected 'class cx cy w h', got {line!r}") from err
        if not 0 <= c < len(classes):
            raise DataError(f"{p}:{n}: class {c} is not in the {len(classes)} classes")
        box = _finite_box([(cx - bw / 2) * width, (cy - bh / 2) * height, (cx + bw / 2) * width, (cy + bh / 2) * height],
                          p, f"line {n}")
        if box is not None:
            boxes.append(box)
            names.append(classes[c])
    return Boxes(np.array(boxes, np.float64).reshape(-1, 4), tuple(names))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``Float[N, M]`` IoU of ``XYXY`` boxes ``a`` (``N x 4``) and ``b`` (``M x 4``).

    >>> box_iou(np.array([[0, 0, 2, 2.]]), np.array([[1, 0, 3, 2.], [5, 5, 6, 6]])).round(3).tolist()
    [[0.333, 0.0]]
    """
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
