"""Reading and writing image files: every error names the file; every write is atomic."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_EXTENSIONS = (".tif", ".tiff")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class DataError(ValueError):
    """Bad input data. The message always names the file and says what is wrong."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an ``HW`` or ``HWC`` array in its stored dtype (uint8, uint16, float...).

    Convert it to the contract's tensor with :func:`hemaseg.data.contract.image_to_tensor`.
    Palette images are expanded to RGB; PIL's 16-bit gray modes come back as ``uint16``.
    """
    p = Path(path)
    try:
        if p.suffix.lower() in TIFF_EXTENSIONS:
            arr = tifffile.imread(p)
            if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
                arr = np.moveaxis(arr, 0, -1)  # CHW TIFF -> HWC
        else:
            with Image.open(p) as im:
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("I;16", "I;16B", "I;16L"):
                    arr = np.array(im, dtype=np.uint16)
                    return _check_image(arr, p)
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
                    im = im.convert("RGB" if im.mode != "1" else "L")
                arr = np.array(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise DataError(f"{p}: cannot read image ({err})") from err
    return _check_image(arr, p)


def _check_image(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise DataError(f"{path}: expected a 2-D grayscale or colour image, got array shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path}: image is empty (shape {arr.shape})")
    return arr


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """Read a mask or label image as a 2-D integer array (uint8, uint16 or int32).

    An RGB(A) mask whose colour channels are equal is accepted as gray; other colour masks are refused.
    """
    p = Path(path)
    arr = read_image(p)
    if arr.ndim == 3:
        rgb = arr[:, :, : min(3, arr.shape[2])]
        if not (rgb == rgb[:, :, :1]).all():
            raise DataError(f"{p}: a mask must be a single-channel image, got a colour image with different channels")
        arr = rgb[:, :, 0]
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)) or arr.min() < 0:
            raise DataError(f"{p}: a float mask must hold non-negative whole numbers")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise DataError(f"{p}: unsupported mask dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise DataError(f"{p}: a mask must not hold negative values")
    return arr.astype(np.int32) if arr.dtype.itemsize > 2 or arr.dtype.kind == "i" else arr


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + final.suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return final


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files :func:`atomic_write` leaves in ``folder`` when its process is killed
    mid-write (``.NAME.XXXX.tmp.EXT``); the files they were replacing are intact. Returns them."""
    stale = [p for p in Path(folder).glob(".*.tmp*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_image(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``HW``/``HWC`` uint8 or ``HW`` uint16 to PNG/TIFF (by extension), atomically."""
    p = Path(path)
    arr = np.asarray(array)
    if p.suffix.lower() in TIFF_EXTENSIONS:
        return atomic_write(p, lambda t: tifffile.imwrite(t, arr, compression="zlib"))
    fmt = {".png": "PNG", ".bmp": "BMP", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(p.suffix.lower())
    if fmt is None:
        raise ValueError(f"{p}: unsupported image extension")
    return atomic_write(p, lambda t: Image.fromarray(arr).save(t, format=fmt))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda t: t.write_text(text, encoding="utf-8"))


def csv_text(rows: list[dict], header: list[str]) -> str:
    """CSV text of ``rows`` with the columns ``header`` (missing or ``None`` values empty, extras ignored)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in header})
    return buf.getvalue()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically, pretty-printed."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
