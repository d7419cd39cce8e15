"""What a COCO instance JSON must get right before pycocotools sees it: ids, image sizes, and every
polygon or RLE (finite numbers in a sane range, at least 3 points, some of it on the image). pycocotools
itself turns a NaN or 1e9 coordinate into an endless allocation and a short polygon into its internal
text, so everything is checked here, once, where the file enters (:func:`check_coco`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .io import DataError

#: the largest image side accepted in a COCO file (px); larger sizes are typing errors
MAX_SIDE = 1_000_000
#: how far beyond the image edge a vertex may lie, in image sizes (a cell cut by the edge is clipped)
MARGIN = 1.0


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    try:
        return _number(v) and math.isfinite(v)
    except OverflowError:  # an int beyond any float
        return False


def _whole(v: Any) -> bool:
    return _finite(v) and v == int(v)


def polygon_problem(poly: Any, h: int, w: int) -> str | None:
    """What is wrong with one COCO polygon (``[x1, y1, x2, y2, ...]``, pixels) on an ``h x w`` image, or None.

    >>> polygon_problem([2, 2, 10, 2, 10, 10], 20, 20) is None
    True
    >>> polygon_problem([1, 2, 3], 20, 20)
    'has 3 numbers: a polygon needs x,y pairs, at least 3 points'
    >>> polygon_problem([2, 2, float("nan"), 2, 10, 10], 20, 20)
    'has a coordinate that is not a finite number (nan)'
    >>> polygon_problem([30, 30, 40, 30, 40, 40], 20, 20)
    'lies entirely outside the image (20x20)'
    """
    if not isinstance(poly, list):
        return f"is a {type(poly).__name__}, not a list of numbers"
    if len(poly) < 6 or len(poly) % 2:
        return f"has {len(poly)} numbers: a polygon needs x,y pairs, at least 3 points"
    bad = [v for v in poly if not _finite(v)]
    if bad:
        return f"has a coordinate that is not a finite number ({str(bad[0])[:20]})"
    xs, ys = poly[0::2], poly[1::2]
    if min(xs) < -MARGIN * w or max(xs) > (1 + MARGIN) * w or min(ys) < -MARGIN * h or max(ys) > (1 + MARGIN) * h:
        return (f"has a coordinate far outside the image ({w}x{h}): x {min(xs):g}..{max(xs):g}, "
                f"y {min(ys):g}..{max(ys):g}")
    if max(xs) <= 0 or min(xs) >= w or max(ys) <= 0 or min(ys) >= h:
        return f"lies entirely outside the image ({w}x{h})"
    return None


def rle_problem(rle: Any, h: int, w: int) -> str | None:
    """What is wrong with a COCO RLE (``{"size": [h, w], "counts": ...}``) on an ``h x w`` image, or None.

    >>> rle_problem({"size": [2, 2], "counts": [1, 3]}, 2, 2) is None
    True
    >>> rle_problem({"size": [2, 2], "counts": [1, 2]}, 2, 2)
    'RLE counts add up to 3 pixels, not 2x2 = 4'
    """
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_whole(v) for v in size)):
        return f"RLE 'size' must be [height, width], got {size!r}"
    if list(size) != [h, w]:
        return f"RLE size {size[1]}x{size[0]} differs from the image's {w}x{h}"
    if isinstance(counts, list):
        if not all(_whole(c) and c >= 0 for c in counts):
            return "RLE counts must be whole numbers >= 0"
        if sum(counts) != h * w:
            return f"RLE counts add up to {sum(counts)} pixels, not {h}x{w} = {h * w}"
    elif not isinstance(counts, str) or not counts:
        return f"RLE 'counts' must be a list of numbers or a compressed string, got {type(counts).__name__}"
    return None


def segmentation_problem(seg: Any, h: int, w: int) -> str | None:
    """What is wrong with an annotation's ``segmentation`` (polygons or RLE), or None."""
    if isinstance(seg, dict):
        return rle_problem(seg, h, w)
    if not isinstance(seg, list) or not seg:
        return "has no polygon" if isinstance(seg, list) else f"is a {type(seg).__name__}, not polygons or an RLE"
    problems = [polygon_problem(poly, h, w) for poly in seg]
    for k, problem in enumerate(problems):
        if problem is not None and not (problem.startswith("lies entirely outside") and len(seg) > 1):
            return f"polygon {k} {problem}"
    if all(problems):
        return f"every polygon lies entirely outside the image ({w}x{h})"
    return None


def _id_problems(data: dict) -> list[str]:
    problems = []
    for key, needed in (("images", ("id", "file_name")), ("annotations", ("id", "image_id", "category_id")),
                        ("categories", ("id", "name"))):
        items = data[key]
        bad = [i for i, item in enumerate(items) if not isinstance(item, dict) or any(k not in item for k in needed)]
        problems += [f"{key}[{i}] lacks one of {', '.join(needed)}" for i in bad[:3]]
        ids = [item["id"] for item in items if isinstance(item, dict) and "id" in item]
        if any(not isinstance(i, int) or isinstance(i, bool) for i in ids):
            problems.append(f"{key} ids must be whole numbers")
            continue
        seen: set = set()
        dup = sorted({i for i in ids if i in seen or seen.add(i)}, key=str)
        if dup:
            problems.append(f"duplicate {key} id(s) {dup[:5]}")
    return problems


def check_coco(path: str | Path, data: Any) -> None:
    """Refuse a COCO document with a :class:`DataError` naming ``path`` and the first problems: the three
    lists, unique ids, every annotation on a listed image and category, image sizes, and each
    non-crowd annotation's segmentation (:func:`segmentation_problem`)."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO JSON is an object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: COCO JSON needs a '{key}' list")
    problems = _id_problems(data)
    if problems:
        raise DataError(f"{path}: bad COCO ids: " + "; ".join(problems))
    sizes = {}
    for img in data["images"]:
        h, w = img.get("height"), img.get("width")
        if not (_whole(h) and _whole(w) and 0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
            problems.append(f"image {img['id']} needs a whole positive 'height' and 'width', got {h!r} x {w!r}")
        else:
            sizes[img["id"]] = (int(h), int(w))
    cats = {c["id"] for c in data["categories"]}
    image_ids = {img["id"] for img in data["images"]}
    for ann in data["annotations"]:
        aid = ann.get("id")
        if not all(isinstance(ann[k], int) and not isinstance(ann[k], bool) for k in ("image_id", "category_id")):
            problems.append(f"annotation {aid}: image_id and category_id must be whole numbers")
            continue
        if ann["image_id"] not in sizes:
            if ann["image_id"] not in image_ids:
                problems.append(f"annotation {aid} refers to unknown image id {ann['image_id']}")
            continue
        if ann["category_id"] not in cats:
            problems.append(f"annotation {aid} has unknown category_id {ann['category_id']}")
        elif not ann.get("iscrowd", 0):
            problem = segmentation_problem(ann.get("segmentation"), *sizes[ann["image_id"]])
            if problem:
                problems.append(f"annotation {aid} has a bad segmentation: {problem}")
        if len(problems) >= 5:
            break
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems[:5]))
