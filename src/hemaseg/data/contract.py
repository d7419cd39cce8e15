"""The one data contract of hemaseg. Every loader, transform, model wrapper and metric obeys it.

It is torchvision's detection contract, written down once:

* **image**: ``FloatTensor[3, H, W]`` (CHW), RGB, values in ``[0, 1]``.
* **target**: a ``dict`` with

  - ``boxes``: ``FloatTensor[N, 4]``, XYXY in pixels, ``x2``/``y2`` exclusive
    (a one-pixel cell at column 5 has ``x1 = 5, x2 = 6``), always derived from ``masks``;
  - ``labels``: ``Int64Tensor[N]``, class ids ``1..C`` (``0`` is background and never appears);
  - ``masks``: ``UInt8Tensor[N, H, W]``, one binary (0/1) mask per cell;
  - ``nuclei`` (optional): ``UInt8Tensor[N, H, W]``, the nucleus pixels of each cell
    (all zero for a cell without nucleus information, e.g. a red cell);
  - ``image_id`` (optional): ``int``.

``N`` may be 0: an image with no cell is a valid sample, with ``boxes`` of shape ``[0, 4]``
and ``masks`` of shape ``[0, H, W]``.

On disk and in NumPy land, images are read as ``HWC uint8``/``float`` arrays and converted here
by :func:`image_to_tensor`; instance masks are ``N x H x W`` arrays or *label images*
(``H x W`` integers, 0 background, 1..N cells), converted by :func:`labels_to_masks`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Target = dict[str, Any]

TARGET_KEYS = ("boxes", "labels", "masks", "nuclei")


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """Convert an ``HWC`` (or ``HW``) image of any common dtype to the contract's ``CHW float [0,1]`` RGB.

    Integer images are divided by their dtype's maximum (uint8 by 255, uint16 by 65535), so a
    16-bit and an 8-bit rendering of the same scene give the same tensor. Grayscale is repeated
    to three channels; an alpha channel is dropped. Float images must already lie in ``[0, 1]``.

    >>> image_to_tensor(np.full((2, 3), 255, np.uint8)).shape
    torch.Size([3, 2, 3])
    >>> float(image_to_tensor(np.full((1, 1, 3), 65535, np.uint16)).max())
    1.0
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"image must be HW or HWC, got shape {arr.shape}")
    channels = arr.shape[2]
    if channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif channels == 2:  # gray + alpha
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif channels >= 4:
        arr = arr[:, :, :3]
    if arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if out.size and (not np.isfinite(out).all() or out.min() < 0 or out.max() > 1):
            raise ValueError("float images must hold finite values in [0, 1]")
    else:
        raise ValueError(f"unsupported image dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def tensor_to_image(image: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`image_to_tensor` for display and saving: ``CHW float`` -> ``HWC uint8``."""
    arr = image.detach().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    return arr.permute(1, 2, 0).numpy()


def image_to_rgb8(image: np.ndarray) -> np.ndarray:
    """Any image :func:`image_to_tensor` takes, as ``HWC uint8`` RGB (for pictures). An 8-bit RGB image
    is returned as is, without the float copy.

    >>> image_to_rgb8(np.full((2, 2), 65535, np.uint16))[0, 0].tolist()
    [255, 255, 255]
    """
    arr = np.asarray(image)
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3:
        return arr
    return tensor_to_image(image_to_tensor(arr))


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``UInt8/Bool[N, H, W]`` masks -> ``FloatTensor[N, 4]`` XYXY boxes with exclusive ``x2, y2``.

    Empty masks get the degenerate box ``[0, 0, 0, 0]``; callers drop them with :func:`drop_empty`.

    >>> m = torch.zeros(1, 4, 6, dtype=torch.uint8); m[0, 1:3, 2:5] = 1
    >>> masks_to_boxes(m).tolist()
    [[2.0, 1.0, 5.0, 3.0]]
    """
    n = masks.shape[0]
    boxes = torch.zeros((n, 4), dtype=torch.float32)
    if n == 0:
        return boxes
    m = masks.bool()
    rows = m.any(dim=2)  # N, H
    cols = m.any(dim=1)  # N, W
    h, w = masks.shape[1:]
    nonempty = rows.any(dim=1)
    ar_h = torch.arange(h)
    ar_w = torch.arange(w)
    big = max(h, w) + 1
    y1 = torch.where(rows, ar_h, big).min(dim=1).values
    y2 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x1 = torch.where(cols, ar_w, big).min(dim=1).values
    x2 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    stacked = torch.stack([x1, y1, x2, y2], dim=1).float()
    boxes[nonempty] = stacked[nonempty]
    return boxes


def make_target(
    masks: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | list[int] | None = None,
    nuclei: np.ndarray | torch.Tensor | None = None,
    image_id: int | None = None,
) -> Target:
    """Build a contract target from ``N x H x W`` masks (any dtype; nonzero = inside).

    ``labels`` defaults to class 1 for every instance. Boxes are derived from the masks.
    Instances whose mask is empty are dropped (with their label and nucleus).
    """
    m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be N x H x W, got shape {tuple(m.shape)}")
    m = (m != 0).to(torch.uint8)
    n = m.shape[0]
    if labels is None:
        lab = torch.ones(n, dtype=torch.int64)
    else:
        lab = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
        if lab.numel() != n:
            raise ValueError(f"{lab.numel()} labels for {n} masks")
        if n and int(lab.min()) < 1:
            raise ValueError("labels must be >= 1 (0 is background)")
    target: Target = {"masks": m, "labels": lab}
    if nuclei is not None:
        nu = torch.as_tensor(np.asarray(nuclei) if not isinstance(nuclei, torch.Tensor) else nuclei)
        if tuple(nu.shape) != tuple(m.shape):
            raise ValueError(f"nuclei shape {tuple(nu.shape)} differs from masks {tuple(m.shape)}")
        target["nuclei"] = (nu != 0).to(torch.uint8) & m
    if image_id is not None:
        target["image_id"] = int(image_id)
    return drop_empty(target)


def drop_empty(target: Target, min_area: int = 1) -> Target:
    """Recompute boxes from masks and drop instances with fewer than ``min_area`` pixels."""
    masks = target["masks"]
    keep = masks.flatten(1).sum(dim=1) >= min_area if masks.shape[0] else torch.zeros(0, dtype=torch.bool)
    out = dict(target)
    for key in ("masks", "labels", "nuclei"):
        if key in out:
            out[key] = out[key][keep]
    out["boxes"] = masks_to_boxes(out["masks"])
    return out


def add_nucleus_instances(target: Target, label: int) -> Target:
    """The target with each cell's nucleus (``target["nuclei"]``, when present) appended as an instance
    of class ``label`` of its own, overlapping its cell - how a model learns nuclei (:mod:`hemaseg.train`).
    The ``nuclei`` key is dropped: its rows no longer follow ``masks``.

    >>> cell = np.zeros((1, 6, 6), np.uint8); cell[0, 1:5, 1:5] = 1
    >>> nucleus = np.zeros_like(cell); nucleus[0, 2:4, 2:4] = 1
    >>> t = add_nucleus_instances(make_target(cell, nuclei=nucleus), label=2)
    >>> t["labels"].tolist(), t["masks"].sum(dim=(1, 2)).tolist(), t["boxes"][1].tolist(), "nuclei" in t
    ([1, 2], [16, 4], [2.0, 2.0, 4.0, 4.0], False)
    """
    out = {k: v for k, v in target.items() if k != "nuclei"}
    nuclei = target.get("nuclei")
    if nuclei is None:
        return out
    nuclei = nuclei[(nuclei.flatten(1) != 0).any(dim=1)]
    out["masks"] = torch.cat([target["masks"], nuclei])
    out["labels"] = torch.cat([target["labels"], torch.full((nuclei.shape[0],), int(label), dtype=torch.int64)])
    out["boxes"] = masks_to_boxes(out["masks"])
    return out


def empty_target(height: int, width: int, with_nuclei: bool = False) -> Target:
    """The target of an image with no cell."""
    target: Target = {
        "boxes": torch.zeros((0, 4), dtype=torch.float32),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "masks": torch.zeros((0, height, width), dtype=torch.uint8),
    }
    if with_nuclei:
        target["nuclei"] = torch.zeros((0, height, width), dtype=torch.uint8)
    return target


def labels_to_masks(label_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``HxW`` label image (0 background, ids > 0) -> (``N x H x W uint8`` masks, ``int64[N]`` ids).

    Ids need not be consecutive; they are returned in increasing order.

    >>> masks, ids = labels_to_masks(np.array([[0, 3], [3, 7]]))
    >>> ids.tolist(), masks.sum(axis=(1, 2)).tolist()
    ([3, 7], [2, 1])
    """
    lab = np.asarray(label_image)
    if lab.ndim != 2:
        raise ValueError(f"a label image must be 2-D, got shape {lab.shape}")
    if lab.dtype.kind not in "iub":
        raise ValueError(f"a label image must hold integers, got {lab.dtype}")
    ids = np.unique(lab)
    ids = ids[ids > 0].astype(np.int64)
    masks = (lab[None, :, :] == ids[:, None, None]).astype(np.uint8)
    return masks, ids


def masks_to_labels(masks: np.ndarray | torch.Tensor, scores: np.ndarray | None = None) -> np.ndarray:
    """``N x H x W`` masks -> ``HxW`` label image (``uint16`` if N < 65536, else ``int32``).

    Where masks overlap, the one with the higher score wins (by default the later instance).
    Instance ``i`` gets id ``i + 1``.
    """
    m = masks.numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    n, h, w = m.shape
    dtype = np.uint16 if n < 65536 else np.int32
    out = np.zeros((h, w), dtype=dtype)
    order = np.arange(n) if scores is None else np.argsort(np.asarray(scores), kind="stable")
    for i in order:  # lowest priority first, highest painted last
        out[m[i] != 0] = i + 1
    return out


def validate_target(image: torch.Tensor, target: Target) -> None:
    """Raise ``ValueError`` if ``image``/``target`` break the contract. Used by tests and loaders."""
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.float32:
        raise ValueError(f"image must be float32 [3, H, W], got {image.dtype} {tuple(image.shape)}")
    h, w = image.shape[1:]
    masks, boxes, labels = target["masks"], target["boxes"], target["labels"]
    n = masks.shape[0]
    if masks.dtype != torch.uint8 or tuple(masks.shape) != (n, h, w):
        raise ValueError(f"masks must be uint8 [N, {h}, {w}], got {masks.dtype} {tuple(masks.shape)}")
    if boxes.dtype != torch.float32 or tuple(boxes.shape) != (n, 4):
        raise ValueError(f"boxes must be float32 [{n}, 4], got {boxes.dtype} {tuple(boxes.shape)}")
    if labels.dtype != torch.int64 or tuple(labels.shape) != (n,):
        raise ValueError(f"labels must be int64 [{n}], got {labels.dtype} {tuple(labels.shape)}")
    if n and (labels.min() < 1):
        raise ValueError("labels must be >= 1")
    if "nuclei" in target and tuple(target["nuclei"].shape) != (n, h, w):
        raise ValueError("nuclei must have the shape of masks")


def crop_image(image, box) -> torch.Tensor:
    """The ``XYXY`` ``box`` of an image - a contract ``CHW`` tensor, or an ``HWC``/``HW`` array of any
    dtype :func:`~hemaseg.data.contract.image_to_tensor` takes - as a contract ``CHW float`` tensor."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if isinstance(image, torch.Tensor):
        return image[:, y0:y1, x0:x1]
    return image_to_tensor(image[y0:y1, x0:x1])


def image_size(image) -> tuple[int, int]:
    """``(height, width)`` of a ``CHW`` tensor or an ``HWC``/``HW`` array."""
    return tuple(image.shape[1:3]) if isinstance(image, torch.Tensor) else tuple(image.shape[:2])
