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

from ..errors import HemasegError

IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_EXTENSIONS = (".tif", ".tiff")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class DataError(HemasegError, ValueError):
    """Bad input data. The message always names the file and says what is wrong."""


#: the most pixels an image may have (Pillow refuses more than ~179 Mpx on its own as a decompression bomb)
MAX_PIXELS = 500_000_000
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own bomb check at our limit (it refuses at twice it)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an ``HW`` or ``HWC`` array in its stored dtype (uint8, uint16, float...).

    The format is decided by the file's content, not its name (a PNG named ``.tif`` is read as PNG).
    Palette images are expanded to RGB; PIL's 16-bit gray modes come back as ``uint16``; CMYK (TIFF or
    JPEG) is converted to RGB; a TIFF of several pages or planes (a stack) is refused, as is an image of
    more than :data:`MAX_PIXELS` pixels. Convert the result to the contract's tensor with
    :func:`hemaseg.data.contract.image_to_tensor`.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
        if not head:
            raise DataError(f"{p}: cannot read image (the file is empty)")
        arr = _read_tiff(p) if head in _TIFF_MAGIC else _read_pil(p)
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        raise DataError(f"{p}: over hemaseg's limit of {MAX_PIXELS / 1e6:.0f} Mpx ({err}); cut the image into parts") from err
    except UnidentifiedImageError as err:
        raise DataError(f"{p}: cannot read image (not an image format Pillow or tifffile knows)") from err
    except (OSError, ValueError, SyntaxError, tifffile.TiffFileError) as err:
        raise DataError(f"{p}: cannot read image ({why(err)})") from err
    return _check_image(arr, p)


def _too_large(p: Path, h: int, w: int) -> None:
    if h * w > MAX_PIXELS:
        raise DataError(f"{p}: {w}x{h} = {h * w / 1e6:.0f} Mpx is over hemaseg's limit of {MAX_PIXELS / 1e6:.0f} Mpx; "
                        "cut the image into parts")


def _read_pil(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        _too_large(p, im.height, im.width)
        im.load()
        if getattr(im, "n_frames", 1) > 1:
            raise DataError(f"{p}: {im.n_frames} frames (an animation or a stack); hemaseg reads one image per file")
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode in ("I;16", "I;16B", "I;16L"):
            return np.array(im, dtype=np.uint16)
        elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
            im = im.convert("RGB" if im.mode != "1" else "L")
        return np.array(im)


def _read_tiff(p: Path) -> np.ndarray:
    """A TIFF's first series as ``HW``/``HWC``: pages or planes beyond one image are refused (a stack of
    3 grayscale pages is not an RGB image), CMYK converted to RGB, min-is-white inverted."""
    with tifffile.TiffFile(p) as tif:
        if not tif.series:
            raise DataError(f"{p}: the TIFF holds no image")
        series = tif.series[0]
        page = series.keyframe
        axes, shape = series.axes, series.shape
        if 0 in shape:
            raise DataError(f"{p}: image is empty (shape {shape})")
        stack = [f"{n} along {a}" for a, n in zip(axes, shape) if a not in "YXS" and n > 1]
        if stack or len(tif.series) > 1:
            what = ", ".join(stack) or f"{len(tif.series)} images"
            raise DataError(f"{p}: a stack of images ({what}; TIFF axes {axes}, shape {shape}); hemaseg reads one "
                            "image per file: save each page or plane as its own file")
        if "Y" in axes and "X" in axes:
            _too_large(p, shape[axes.index("Y")], shape[axes.index("X")])
        arr = series.asarray()
        photometric = int(page.photometric)
        extras = len(page.extrasamples)
    keep = "".join(a for a in axes if a in "YXS")
    arr = arr.reshape([n for a, n in zip(axes, shape) if a in "YXS"])
    if keep.startswith("S"):  # planar: channels first
        arr = np.moveaxis(arr, 0, -1)
    if photometric == 5:  # SEPARATED: CMYK (inks) -> RGB
        if arr.ndim != 3 or arr.shape[2] - extras != 4:
            raise DataError(f"{p}: a separated (ink) TIFF that is not CMYK ({arr.shape[-1]} samples)")
        arr = _cmyk_to_rgb(arr[..., :4])
    elif photometric == 0 and arr.dtype.kind in "ui":  # MINISWHITE: 0 is white
        arr = np.iinfo(arr.dtype).max - arr
    return arr


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """``HWx4`` CMYK -> ``HWx3`` RGB of the same dtype, each colour ``(1 - ink) * (1 - black)``.

    >>> _cmyk_to_rgb(np.array([[[0, 255, 255, 0], [0, 0, 0, 255]]], np.uint8)).tolist()
    [[[255, 0, 0], [0, 0, 0]]]
    """
    top = float(np.iinfo(cmyk.dtype).max) if cmyk.dtype.kind in "ui" else 1.0
    c = cmyk.astype(np.float64) / top
    rgb = (1 - c[..., :3]) * (1 - c[..., 3:4]) * top
    return np.round(rgb).astype(cmyk.dtype) if cmyk.dtype.kind in "ui" else rgb.astype(cmyk.dtype)


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


def why(err: BaseException) -> str:
    """What went wrong, in words, for a message that already names the file: an OS error's own text
    without "[Errno N]" and the path again, "not UTF-8 text" for a decoding error.

    >>> why(FileNotFoundError(2, "No such file or directory", "x.csv"))
    'no such file or directory'
    >>> why(ValueError("bad value"))
    'bad value'
    """
    if isinstance(err, OSError) and err.strerror:
        return err.strerror[:1].lower() + err.strerror[1:]
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text (byte {err.start})"
    return str(err) or type(err).__name__


def check_writable(path: str | os.PathLike, folder: bool = True) -> Path:
    """Refuse, before any work, an output ``path`` that cannot be written: a folder (``folder``) that is a
    file, a file that is a folder, or a place under a file or in a folder this process cannot write to
    (a probe file is created and removed). Nothing is created. Returns ``path``."""
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise DataError(f"{p}: is a file, not a folder")
    if not folder and p.is_dir():
        raise DataError(f"{p}: is a folder; name a file")
    place = p if folder else p.parent
    while not place.exists():
        if place.is_symlink():
            raise DataError(f"{p}: {place} is a link to nothing")
        place = place.parent
    if not place.is_dir():
        raise DataError(f"{p}: {place} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".hemaseg-write-test.", dir=place)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise DataError(f"{p}: cannot write in {place} ({why(err)})") from err
    return p


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
