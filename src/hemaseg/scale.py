"""Each image's scale, without settings: a small CNN reads the pixel size (um per pixel) off the cells.

Every blood smear carries its own ruler: red cells are about 7.5 um wide in any lab, and white cells,
platelets and the texture of the smear scale with them. :class:`ScaleNet` looks at the image shrunk by a
fixed factor (``ScaleConfig.downsample``) - so that its view of a cell grows with the cell - and predicts
``log(um per px)`` and whether there are blood cells to measure at all. It is trained
(:func:`train_scale_net`) on real images of known pixel size, each zoomed to a random magnification
(0.03-0.6 um/px) so that it must read the size of what it sees rather than recognise a lab, with
colour, blur and noise jitter, and on pictures without cells (flat, noise, text, stripes).

:func:`estimate_scale` runs it on up to ``max_views`` windows of an image (and their mirror images) and
returns a :class:`ScaleEstimate`: the median pixel size, how far the windows disagree, and whether the
estimate can be trusted (cells seen, windows agreeing, a pixel size in the range it was trained on).
A segmentation model trained at ``ModelConfig.pixel_size`` then sees every image at its own scale
(:meth:`ScaleEstimate.factor`).

A scale model file is a plain dict of tensors and JSON values (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.contract import image_to_tensor
from .data.io import atomic_write
from .errors import SettingError

RED_CELL_UM = 7.5  # diameter of a normal red cell in a dried smear (um): what "red-cell diameter" reports
SCALE_FORMAT = "hemaseg-scale"
BUNDLED_SCALE = Path(__file__).parent / "models" / "scale.pt"  # see models/MODEL_CARD.md


@dataclass(frozen=True)
class ScaleConfig:
    """The scale CNN and how it is read. ``downsample``: the network sees the image shrunk this many times
    (antialiased); ``widths``: channels of its stages (each halves the resolution); ``view``: the largest
    window (network pixels) it reads at once; ``range_um``: pixel sizes it was trained on - an estimate
    outside is not trusted; ``max_spread``: largest disagreement between windows (interquartile range of
    log pixel size) of a trusted estimate; ``min_cells``: probability of blood cells under which an image
    is said to hold nothing to measure."""

    downsample: int = 2
    widths: tuple[int, ...] = (24, 48, 96, 128, 160)
    view: int = 192
    range_um: tuple[float, float] = (0.03, 0.6)
    max_spread: float = 0.12
    min_cells: float = 0.5

    def __post_init__(self):
        if self.downsample < 1 or not self.widths or self.view < 16:
            raise SettingError(f"bad scale config {self}")
        if not 0 < self.range_um[0] < self.range_um[1]:
            raise SettingError(f"range_um must be (low, high) with 0 < low < high, got {self.range_um}")

    @property
    def reading_um(self) -> float:
        """um per network pixel in the middle (geometric) of the training range: ``downsample *
        sqrt(low * high)`` - where :func:`estimate_scale` takes its second reading.

        >>> round(ScaleConfig(downsample=2, range_um=(0.03, 0.6)).reading_um, 3)
        0.268
        """
        return self.downsample * math.sqrt(self.range_um[0] * self.range_um[1])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScaleConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        if set(d) - names:
            raise SettingError(f"unknown scale config keys {sorted(set(d) - names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class ScaleNet(nn.Module):
    """A plain CNN: per stage a stride-2 and a stride-1 3x3 convolution (BatchNorm, ReLU), then average
    pooling over the whole view and two outputs: ``log(um per px)`` of the full-size image and the logit
    of "blood cells are in view". Each view is standardised per channel first (stain and brightness of a
    lab say nothing about its magnification)."""

    def __init__(self, cfg: ScaleConfig = ScaleConfig()):
        super().__init__()
        layers, c_in = [], 3
        for c in cfg.widths:
            layers += [nn.Conv2d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c_in, 64), nn.ReLU(inplace=True), nn.Linear(64, 2))
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``Float[B, 3, h, w]`` views in [0, 1] (already shrunk). Returns ``Float[B, 2]``:
        ``log(um/px)`` of the full-size image, logit of cells present."""
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True).clamp(min=0.02)
        f = self.features((x - mean) / std)
        return self.head(f.mean(dim=(2, 3)))


@dataclass(frozen=True)
class ScaleEstimate:
    """One image's scale. ``pixel_size``: um per pixel (None when there was nothing to measure from);
    ``source``: ``estimated`` (:func:`estimate_scale`), ``pixel-size`` (given by the user), ``diameter``
    (a white-cell diameter given by the user) or ``none`` (image used as it is); ``confident``: the
    estimate can be trusted (then measurements in um use it); ``spread``: disagreement between views
    (interquartile range of their log pixel size); ``cells``: probability that blood cells are in the image;
    ``note``: why an estimate is not trusted; ``resize``: how much a model resizes the image to see it at its
    own scale (:func:`hemaseg.predict.image_scale` sets it)."""

    pixel_size: float | None
    source: str = "estimated"
    confident: bool = True
    spread: float = 0.0
    cells: float = 1.0
    note: str = ""
    resize: float = 1.0

    @property
    def red_cell_px(self) -> float | None:
        """The diameter (px) of a normal red cell (:data:`RED_CELL_UM`) at this scale.

        >>> ScaleEstimate(0.1).red_cell_px
        75.0
        """
        return None if self.pixel_size is None else round(RED_CELL_UM / self.pixel_size, 2)

    def factor(self, model_pixel_size: float | None) -> float:
        """How much to resize the image for a model working at ``model_pixel_size`` um/px (1 when either is
        unknown: the image is used as it is).

        >>> ScaleEstimate(0.08).factor(0.16), ScaleEstimate(None, "none").factor(0.16)
        (0.5, 1.0)
        """
        if self.pixel_size is None or model_pixel_size is None:
            return 1.0
        return self.pixel_size / model_pixel_size

    def describe(self) -> str:
        """One line for the log.

        >>> ScaleEstimate(0.1, spread=0.02).describe()
        'estimated 0.1000 um/px (red cell 75 px)'
        """
        if self.pixel_size is None:
            return f"no scale: {self.note or 'nothing to measure from'}; the image is used as it is"
        text = f"{self.source} {self.pixel_size:.4f} um/px (red cell {self.red_cell_px:.0f} px)"
        return text if self.confident else f"{text}, not trusted: {self.note}"


def shrink(image: torch.Tensor, factor: float) -> torch.Tensor:
    """``image`` ``Float[3, H, W]`` resized by ``factor`` (antialiased when shrinking), at least 1 px a side.

    >>> tuple(shrink(torch.zeros(3, 40, 30), 0.25).shape)
    (3, 10, 8)
    """
    h, w = image.shape[-2:]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    if size == (h, w):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=factor < 1)[0].clamp(0, 1)


def pad_to(view: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror ``view`` (``Float[3, h, w]``) out to at least ``size`` px a side: mirrored cells keep their size.

    >>> tuple(pad_to(torch.zeros(3, 5, 20), 16).shape)
    (3, 16, 20)
    """
    while view.shape[-2] < size or view.shape[-1] < size:
        ph, pw = max(0, size - view.shape[-2]), max(0, size - view.shape[-1])
        ph, pw = min(ph, view.shape[-2] - 1), min(pw, view.shape[-1] - 1)
        if ph == 0 and pw == 0:  # a 1-px side cannot be mirrored: repeat it
            view = F.pad(view[None], (0, max(0, size - view.shape[-1]), 0, max(0, size - view.shape[-2])), mode="replicate")[0]
            break
        view = F.pad(view[None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")[0]
    return view


def views(small: torch.Tensor, size: int, count: int) -> list[torch.Tensor]:
    """Up to ``count`` windows of ``size`` px (a grid spread over ``small``, ``Float[3, h, w]``); an image
    no larger than one window is one view (mirrored out to 32 px a side at least).

    >>> [tuple(v.shape) for v in views(torch.zeros(3, 50, 400), 64, 4)]
    [(3, 50, 64), (3, 50, 64), (3, 50, 64), (3, 50, 64)]
    """
    h, w = small.shape[-2:]
    ny, nx = max(1, math.ceil(h / size)), max(1, math.ceil(w / size))
    while ny * nx > count:
        ny, nx = (ny - 1, nx) if ny >= nx and ny > 1 else (ny, max(1, nx - 1))
    ys = np.linspace(0, max(0, h - size), ny).round().astype(int)
    xs = np.linspace(0, max(0, w - size), nx).round().astype(int)
    return [pad_to(small[:, y : y + size, x : x + size], 32) for y in ys for x in xs]


@torch.inference_mode()
def read_views(net: ScaleNet, x: torch.Tensor, shrunk: float, max_views: int) -> tuple[np.ndarray, np.ndarray]:
    """``net`` on ``x`` (``Float[3, H, W]``) shrunk ``shrunk`` times: per view and its mirror image, the log
    pixel size of ``x`` it reads and the probability that blood cells are in view. The net was trained on
    images shrunk ``cfg.downsample`` times; shrunk otherwise, each of its pixels covers ``shrunk /
    downsample`` times more of the slide, and its reading is scaled back accordingly."""
    cfg = net.cfg
    batch = views(shrink(x.float(), 1 / shrunk), cfg.view, max_views)
    was_training = net.training
    net.eval()
    try:
        stack = torch.stack(batch)  # the views of one image are all the same size
        out = net(torch.cat([stack, stack.flip(-1)]))
    finally:
        net.train(was_training)
    logs = out[:, 0].double().numpy() + math.log(cfg.downsample / shrunk)
    return logs, torch.sigmoid(out[:, 1]).double().numpy()


@torch.inference_mode()
def estimate_scale(net: ScaleNet, image, max_views: int = 8) -> ScaleEstimate:
    """The pixel size of ``image`` (``HWC`` array or contract ``CHW`` tensor) by ``net``, in two readings
    (as Cellpose refines its size estimate): a first one of the image shrunk ``cfg.downsample`` times, then
    a second of the image shrunk so that the net sees it at :attr:`ScaleConfig.reading_um` - the middle of
    the magnifications it was trained on, where it reads best (measured in docs/benchmarks.md). Each
    reading is the median over up to ``max_views`` windows and their mirror images; the checks of
    :class:`ScaleConfig` decide whether the result is trusted."""
    cfg = net.cfg
    x = image if isinstance(image, torch.Tensor) else image_to_tensor(image)
    logs, cells = read_views(net, x, cfg.downsample, max(1, max_views // 2))  # a rough first reading
    seen = cells >= cfg.min_cells
    if not seen.any():
        return ScaleEstimate(None, "none", False, 0.0, round(float(np.median(cells)), 3), "no blood cells recognised")
    first = math.exp(float(np.median(logs[seen])))
    logs, cells = read_views(net, x, min(max(cfg.reading_um / first, 0.5), 64.0), max_views)
    seen = cells >= cfg.min_cells
    p_cells = float(np.median(cells))
    if not seen.any():
        return ScaleEstimate(None, "none", False, 0.0, round(p_cells, 3), "no blood cells recognised")
    q1, med, q3 = np.percentile(logs[seen], [25, 50, 75])
    px, spread = float(math.exp(med)), float(q3 - q1)
    notes = []
    if p_cells < cfg.min_cells:
        notes.append(f"blood cells in only {seen.mean():.0%} of the views")
    if spread > cfg.max_spread:
        notes.append(f"views disagree (spread {spread:.2f} > {cfg.max_spread})")
    lo, hi = cfg.range_um
    if not lo * 1.1 <= px <= hi / 1.1:
        notes.append(f"outside the trained range {lo}-{hi} um/px")
    return ScaleEstimate(round(px, 5), "estimated", not notes, round(spread, 4), round(p_cells, 3), "; ".join(notes))


# ------------------------------------------------------------------------------------- files
def save_scale_net(path: str | Path, net: ScaleNet, compress: bool = False, **extra: Any) -> Path:
    """Write ``{format, config, model, **extra}`` atomically (``extra``: JSON-able values); ``compress``
    stores the large weights in 8 bits (:func:`hemaseg.model.quantize_state`), 4x smaller, for shipping."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    payload = {"format": SCALE_FORMAT, "config": net.cfg.to_dict(), "model": state, **extra}
    if compress:
        from .model import quantize_state

        kept, q, scales = quantize_state(state)
        payload.update(model=kept, model_int8=q, model_int8_scale=scales)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_scale_net(path: str | Path) -> ScaleNet:
    """A scale model from its file, in eval mode (``weights_only=True``: no code runs)."""
    from .model import CheckpointError, load_marked

    p = Path(path)
    ckpt = load_marked(p, SCALE_FORMAT, "scale model")
    try:
        net = ScaleNet(ScaleConfig.from_dict(ckpt["config"]))
        state = ckpt["model"]
        if "model_int8" in ckpt:
            from .model import dequantize_state

            state = dequantize_state(state, ckpt["model_int8"], ckpt["model_int8_scale"])
        net.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{p}: bad scale model ({err})") from err
    return net.eval()


def bundled_scale_net() -> ScaleNet | None:
    """The scale model shipped with the package, or None if this installation has none."""
    return load_scale_net(BUNDLED_SCALE) if BUNDLED_SCALE.is_file() else None


# ------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class ScaleTrainConfig:
    """How :func:`train_scale_net` trains: ``steps`` of ``batch`` views, AdamW ``lr`` (cosine), views of a
    random size in ``sizes`` (network px), each source image zoomed to a pixel size drawn log-uniformly
    from ``net.range_um`` but never enlarged more than ``max_zoom`` times; ``negatives``: share of views
    without cells; ``small_views``: share of views whose image part is a smaller square (16 px up), mirrored
    out to the view's size, as small crops are when they are read."""

    steps: int = 3000
    batch: int = 32
    lr: float = 2e-3
    sizes: tuple[int, ...] = (32, 48, 64, 96, 128, 160, 192)
    max_zoom: float = 2.0
    negatives: float = 0.15
    small_views: float = 0.3
    seed: int = 0


@dataclass
class ScaleSource:
    """Images of one known pixel size (um/px) for training: ``images`` ``HWC uint8`` arrays, kept shrunk by
    ``stored`` (their pixel size is then ``pixel_size / stored``)."""

    name: str
    images: list[np.ndarray]
    pixel_size: float
    stored: float = 1.0


def _jitter_colour(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-channel gain, brightness, contrast and gamma, sometimes gray, blur and noise: ``Float[3, h, w]``."""
    r = lambda: float(torch.rand((), generator=g))  # noqa: E731
    x = x * (1 + (torch.rand(3, 1, 1, generator=g) - 0.5) * 0.5)
    x = (x - x.mean()) * (0.6 + 0.8 * r()) + x.mean() + (r() - 0.5) * 0.3
    x = x.clamp(0, 1) ** (0.6 + 0.8 * r())
    if r() < 0.15:
        x = x.mean(0, keepdim=True).expand(3, -1, -1)
    if r() < 0.3:
        k = 3
        x = F.avg_pool2d(x[None], k, 1, k // 2, count_include_pad=False)[0]
    if r() < 0.5:
        x = x + torch.randn(x.shape, generator=g) * 0.03 * r()
    return x.clamp(0, 1)


def negative_view(size: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """A picture without blood cells, ``Float[3, h, w]``: a flat or graded colour, noise, stripes or text."""
    from PIL import Image, ImageDraw

    h, w = size
    r = lambda: float(torch.rand((), generator=g))  # noqa: E731
    base = torch.rand(3, 1, 1, generator=g)
    kind = int(torch.randint(0, 4, (), generator=g))
    if kind == 0:  # flat or a gradient
        yy = torch.linspace(0, 1, h)[:, None].expand(h, w)
        x = base + (r() - 0.5) * 0.4 * yy
    elif kind == 1:  # smooth noise
        n = torch.rand(3, max(2, h // 8), max(2, w // 8), generator=g)
        x = base * 0.5 + 0.5 * F.interpolate(n[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    elif kind == 2:  # stripes or a grid
        period = 4 + int(torch.randint(0, 40, (), generator=g))
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        x = base * ((((xx if r() < 0.5 else yy) // period) % 2).float() * 0.5 + 0.5)
    else:  # text
        im = Image.new("RGB", (w, h), tuple(int(200 + 55 * r()) for _ in range(3)))
        draw = ImageDraw.Draw(im)
        words = ["hemaseg", "Blood smear", "Patient 0012", "20 um", "Fig. 3", "CBC 7.4", "x1000"]
        for k in range(1 + int(torch.randint(0, 8, (), generator=g))):
            draw.text((r() * w, r() * h), words[k % len(words)], fill=tuple(int(80 * r()) for _ in range(3)),
                      font_size=6 + int(40 * r()))
        x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    return x.expand(3, h, w).clamp(0, 1)


def _view(source: ScaleSource, size: int, cfg: ScaleConfig, tcfg: ScaleTrainConfig, g: torch.Generator):
    """One training view of ``source``: ``(Float[3, size, size], log um/px at the network)`` or None when
    the drawn zoom would enlarge the stored image too much."""
    lo, hi = (math.log(v) for v in cfg.range_um)
    target = math.exp(lo + (hi - lo) * float(torch.rand((), generator=g)))  # um per px of the zoomed image
    stored_px = source.pixel_size / source.stored
    zoom = stored_px / (target * cfg.downsample)  # stored image -> network pixels
    if zoom * cfg.downsample * source.stored > tcfg.max_zoom:  # the original image enlarged more than max_zoom
        return None
    im = source.images[int(torch.randint(0, len(source.images), (), generator=g))]
    h, w = im.shape[:2]
    # sometimes only a small part of the view holds the image (as a small crop does), mirrored out to the view
    content = size if float(torch.rand((), generator=g)) >= tcfg.small_views else int(torch.randint(16, size + 1, (), generator=g))
    # cut the stored region that becomes the view before resizing (cheap for big images)
    ch, cw = min(h, math.ceil(content / zoom) + 2), min(w, math.ceil(content / zoom) + 2)
    y = int(torch.randint(0, h - ch + 1, (), generator=g))
    x = int(torch.randint(0, w - cw + 1, (), generator=g))
    crop = torch.from_numpy(np.array(im[y : y + ch, x : x + cw])).permute(2, 0, 1).float() / 255
    v = shrink(crop, zoom)[:, :content, :content]
    if float(torch.rand((), generator=g)) < 0.5:
        v = v.flip(-1)
    v = torch.rot90(v, int(torch.randint(0, 4, (), generator=g)), dims=(-2, -1))
    v = pad_to(_jitter_colour(v, g), size)[:, :size, :size]
    return v, math.log(target)


def train_scale_net(sources: Sequence[ScaleSource], cfg: ScaleConfig = ScaleConfig(),
                    tcfg: ScaleTrainConfig = ScaleTrainConfig(), log: Callable[[str], None] = print,
                    progress: bool = True, record_every: int = 100) -> tuple[ScaleNet, list[dict]]:
    """Train a :class:`ScaleNet` on ``sources`` (each drawn equally often, whatever its size). Returns the
    net (eval mode) and one record per ``record_every`` steps (loss, mean absolute log error of those steps)."""
    from tqdm.auto import tqdm

    if not sources or any(not s.images for s in sources):
        raise SettingError("train_scale_net needs at least one source, each with images")
    torch.manual_seed(tcfg.seed)
    g = torch.Generator().manual_seed(tcfg.seed)
    net = ScaleNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=tcfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, tcfg.lr, total_steps=tcfg.steps, pct_start=0.1)
    history, errs, losses, t0 = [], [], [], time.perf_counter()
    net.train()
    for step in tqdm(range(tcfg.steps), desc="scale", disable=not progress):
        size = tcfg.sizes[int(torch.randint(0, len(tcfg.sizes), (), generator=g))]
        xs, ys, has = [], [], []
        while len(xs) < tcfg.batch:
            if float(torch.rand((), generator=g)) < tcfg.negatives:
                xs.append(_jitter_colour(negative_view((size, size), g), g)); ys.append(0.0); has.append(0.0)
                continue
            s = sources[int(torch.randint(0, len(sources), (), generator=g))]
            got = _view(s, size, cfg, tcfg, g)
            if got is not None:
                xs.append(got[0]); ys.append(got[1]); has.append(1.0)
        out = net(torch.stack(xs))
        y, m = torch.tensor(ys), torch.tensor(has)
        reg = (F.smooth_l1_loss(out[:, 0], y, reduction="none", beta=0.1) * m).sum() / m.sum().clamp(min=1)
        loss = reg + 0.3 * F.binary_cross_entropy_with_logits(out[:, 1], m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        errs += (out[:, 0].detach() - y).abs()[m > 0].tolist()
        if (step + 1) % record_every == 0 or step + 1 == tcfg.steps:
            rec = {"step": step + 1, "loss": float(np.mean(losses)), "abs_log_error": float(np.mean(errs)),
                   "seconds": round(time.perf_counter() - t0, 1)}
            history.append(rec)
            losses, errs = [], []
            if (step + 1) % 500 == 0 or step + 1 == tcfg.steps:
                log(f"step {rec['step']}: loss {rec['loss']:.4f}, mean |log error| {rec['abs_log_error']:.3f} ({rec['seconds']:.0f}s)")
    return net.eval(), history


# ------------------------------------------------------------------------- folders, split, report
def split_images(files: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """The seeded split of :func:`hemaseg.data.dataset.split_refs` applied to image files, so that a
    folder's held-out images are the same for the scale model as for a segmentation run with that seed."""
    from .data.dataset import split_refs
    from .data.formats import SampleRef

    train, val = split_refs([SampleRef(Path(f), None, "image") for f in files], val_fraction, seed)
    return [r.image for r in train], [r.image for r in val]


def read_source(name: str, files: list[Path], pixel_size: float, stored: float = 1.0) -> ScaleSource:
    """A :class:`ScaleSource` of image files (read as RGB uint8, kept shrunk by ``stored``)."""
    from PIL import Image

    from .data.contract import image_to_rgb8
    from .data.io import read_image

    images = []
    for f in files:
        rgb = image_to_rgb8(read_image(f))
        if stored != 1.0:
            h, w = rgb.shape[:2]
            rgb = np.array(Image.fromarray(rgb).resize((max(1, round(w * stored)), max(1, round(h * stored))), Image.BILINEAR))
        images.append(rgb)
    return ScaleSource(name, images, pixel_size, stored)


def synthetic_source(count: int = 120, seed: int = 7) -> ScaleSource:
    """Painted smears (:mod:`hemaseg.data.synthetic`) at the white-cell crop magnification: red cells of
    radius 17-21 px, i.e. ``RED_CELL_UM / 38`` um per px."""
    from .data.synthetic import SynthConfig, generate

    cfg = SynthConfig.wbc_field(240, 320)
    images = [generate(np.random.default_rng([seed, k]), cfg).image for k in range(count)]
    return ScaleSource("synthetic", images, RED_CELL_UM / 38.0)


def score_scale(net: ScaleNet, files: list[Path], pixel_size: float) -> dict[str, float]:
    """Held-out figures of ``net`` on ``files`` of known ``pixel_size``: images, median and 90th percentile
    of ``|estimate / truth - 1|``, share within 10%, share trusted, seconds per image."""
    from .data.io import read_image

    errs, trusted, t0 = [], [], time.perf_counter()
    for f in files:
        est = estimate_scale(net, read_image(f))
        errs.append(abs(est.pixel_size / pixel_size - 1) if est.pixel_size else math.inf)
        trusted.append(est.confident)
    e = np.array(errs)
    return {"images": len(files), "median_error": float(np.median(e)), "p90_error": float(np.percentile(e, 90)),
            "within_10pct": float((e <= 0.10).mean()), "trusted": float(np.mean(trusted)),
            "s_per_image": (time.perf_counter() - t0) / max(1, len(files))}


def fit_scale(data: Sequence[str | Path], pixel_sizes: Sequence[float], out: str | Path, *,
              val_fraction: float = 0.2, seed: int = 0, synthetic: int = 120, max_side: int = 640,
              cfg: ScaleConfig = ScaleConfig(), tcfg: ScaleTrainConfig = ScaleTrainConfig(),
              log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Train a scale model on image folders of known pixel size (one per folder, in order) and painted
    smears, each folder split on its own with ``seed``; score it on each folder's held-out images; write
    the model to ``out`` with the report (also returned). Images are kept in memory shrunk so that their
    longer side is at most ``max_side`` px (their own scale is then known exactly)."""
    from .data.formats import list_images

    if len(data) != len(pixel_sizes):
        raise SettingError(f"{len(pixel_sizes)} pixel sizes for {len(data)} folders: give one --pixel-size per --data, in order")
    sources, held_out = [], {}
    for folder, px in zip(data, pixel_sizes):
        from .model import check_pixel_size

        check_pixel_size(px, f"{folder}: pixel size")
        files = list_images([folder])
        if not files:
            raise SettingError(f"{folder}: no images")
        train, val = split_images(files, val_fraction, seed)
        from .data.io import read_image

        h, w = read_image(train[0]).shape[:2]
        stored = min(1.0, max_side / max(h, w))
        sources.append(read_source(str(folder), train, px, stored))
        held_out[str(folder)] = (val, px)
        log(f"{folder}: {len(train)} training / {len(val)} held-out images at {px:g} um/px (kept x{stored:.2f})")
    if synthetic:
        sources.append(synthetic_source(synthetic))
        log(f"painted smears: {synthetic} at {sources[-1].pixel_size:.4f} um/px")
    t0 = time.perf_counter()
    net, history = train_scale_net(sources, cfg, tcfg, log=log, progress=progress)
    minutes = (time.perf_counter() - t0) / 60
    report = {"trained_minutes": round(minutes, 2), "train": dataclasses.asdict(tcfg),
              "data": {str(f): px for f, px in zip(data, pixel_sizes)}, "val_fraction": val_fraction, "seed": seed,
              "synthetic": synthetic, "held_out": {}}
    for folder, (val, px) in held_out.items():
        if val:
            report["held_out"][folder] = score_scale(net, val, px)
            r = report["held_out"][folder]
            log(f"held out {folder}: {r['images']} images, median error {r['median_error']:.1%}, "
                f"within 10% {r['within_10pct']:.1%}, trusted {r['trusted']:.1%}")
    save_scale_net(out, net, report=report, history=history)
    return report
