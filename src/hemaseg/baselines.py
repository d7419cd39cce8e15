"""Classical segmentation baselines the original recipe compares against (scikit-image).

* ``otsu`` - Otsu threshold of the HSV saturation (stained cells are saturated, the background is not),
  opening, hole filling, then watershed on the distance transform to split touching cells.
* ``edges`` - Sobel gradient magnitude, Otsu threshold on it, closing and hole filling to turn outlines
  into regions, then the same watershed split.

Both take a contract image (``CHW float [0,1]``) and return ``N x H x W uint8`` instance masks.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.color import rgb2gray, rgb2hsv
from skimage.feature import peak_local_max
from skimage.filters import sobel, threshold_otsu
from skimage.morphology import closing, disk, opening, remove_small_objects
from skimage.segmentation import watershed

from .data.contract import labels_to_masks
from .errors import SettingError

METHODS = ("otsu", "edges")


def split_touching(foreground: np.ndarray, min_distance: int = 7, min_area: int = 30) -> np.ndarray:
    """Label image of ``foreground`` (``HxW bool``) with touching blobs split by a distance-transform
    watershed: one seed per local maximum at least ``min_distance`` px apart.

    >>> yy, xx = np.mgrid[:30, :50]
    >>> fg = ((yy - 15) ** 2 + (xx - 15) ** 2 < 100) | ((yy - 15) ** 2 + (xx - 32) ** 2 < 100)
    >>> int(split_touching(fg).max())
    2
    """
    fg = remove_small_objects(foreground.astype(bool), max_size=max(min_area - 1, 0))
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg), 1.0)  # smoothing merges plateau maxima
    regions, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=regions, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # every region gets at least one seed (a flat region may have no strict maximum)
    missing = np.setdiff1d(np.unique(regions[fg]), np.unique(regions[markers > 0]))
    for r in missing:
        ys, xs = np.nonzero(regions == r)
        markers[ys[len(ys) // 2], xs[len(xs) // 2]] = markers.max() + 1
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.detach().cpu().permute(1, 2, 0).numpy().astype(np.float64)


def otsu_foreground(image: torch.Tensor) -> np.ndarray:
    """``HxW bool`` stained-cell foreground from the Otsu threshold of the saturation channel."""
    sat = rgb2hsv(_hwc(image))[:, :, 1]
    if np.ptp(sat) < 1e-6:
        return np.zeros(sat.shape, bool)
    fg = sat > threshold_otsu(sat)
    fg = opening(fg, disk(2))
    return ndi.binary_fill_holes(fg)


def edges_foreground(image: torch.Tensor) -> np.ndarray:
    """``HxW bool`` foreground from strong edges (Sobel + Otsu), closed and filled into regions."""
    grad = sobel(rgb2gray(_hwc(image)))
    if np.ptp(grad) < 1e-6:
        return np.zeros(grad.shape, bool)
    edges = grad > threshold_otsu(grad)
    regions = ndi.binary_fill_holes(closing(edges, disk(3)))
    return opening(regions, disk(2))


def segment_classical(image: torch.Tensor, method: str, min_distance: int = 7, min_area: int = 30) -> np.ndarray:
    """``N x H x W uint8`` instance masks of ``image`` by the classical ``method`` (``otsu`` or ``edges``)."""
    if method == "otsu":
        fg = otsu_foreground(image)
    elif method == "edges":
        fg = edges_foreground(image)
    else:
        raise SettingError(f"unknown classical method {method!r}; choose from {METHODS}")
    masks, _ = labels_to_masks(split_touching(fg, min_distance, min_area))
    return masks
