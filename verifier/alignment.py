"""Framing: compare a generation with the owner's image under the best alignment within stated bounds.

An owner holds their photograph, not the model's training crop: the same picture framed a little wider
or tighter, moved, mirrored. A model that reproduces its training crop reproduces it at the training
framing, so a pixel-aligned comparison with the owner's framing fails although the copy is exact.

A **framing** places the model's square frame on the owner's image: its side relative to the side of
the image's centred square (``scale``; 1 is verifier's standard preparation), its centre moved by
(``dy``, ``dx``) frame pixels from that square's centre, and optionally mirrored. The owner's pixels
under the frame are resampled to the frame's grid; where the frame reaches past the owner's image
(the owner cropped tighter than the model was trained), only the overlap is compared, and a framing
whose overlap is too small is not tried.

The search is exhaustive over a fixed grid (``FramingBounds``) and scored by SSIM at a search
resolution of at most ``SEARCH_SIDE`` pixels, in one batched computation (``ssim_grid``, equal to
scikit-image's ``structural_similarity`` on the overlap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SEARCH_SIDE = 64  # the search compares frames at most this many pixels a side
SSIM_WINDOW = 7  # scikit-image's default window; an overlap narrower than this cannot be scored


@dataclass(frozen=True)
class Framing:
    scale: float  # the frame's side / the side of the owner image's centred square
    dy: float  # the frame's centre moved down by this many frame pixels at the search resolution (whole
    dx: float  # ... and right; pixels on the grid, fractions once refined: ``refine``)
    mirror: bool

    def record(self, search_side: int) -> dict:
        return {"scale": round(self.scale, 6), "shift": [self.dy / search_side, self.dx / search_side],
                "mirror": self.mirror}


@dataclass(frozen=True)
class FramingBounds:
    """The grid searched: scales log-spaced in [1/max_scale, max_scale], shifts up to ``max_shift`` of the side."""

    max_scale: float = 1.25
    scale_steps: int = 9
    max_shift: float = 0.2
    mirror: bool = True
    min_overlap: float = 0.5  # the compared overlap must cover at least this fraction of the frame

    def contains(self, scale: float, shift: tuple[float, float], overlap: float, mirror: bool) -> bool:
        """Whether a framing (``scale`` and ``shift`` as in ``Framing.record``, ``overlap`` the fraction of the
        frame on the owner's image) lies inside the bounds the grid covers."""
        return (1 / self.max_scale - 1e-9 <= scale <= self.max_scale + 1e-9
                and all(abs(value) <= self.max_shift + 1e-9 for value in shift)
                and overlap >= self.min_overlap and (self.mirror or not mirror))

    def framings(self, side: int) -> list[Framing]:
        scales = np.exp(np.linspace(-math.log(self.max_scale), math.log(self.max_scale), self.scale_steps))
        reach = int(math.floor(self.max_shift * side + 1e-9))
        mirrors = (False, True) if self.mirror else (False,)
        return [Framing(float(scale), dy, dx, mirror) for mirror in mirrors for scale in scales
                for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]


def _reduced(image, side: int):
    """``image`` with its shorter side brought down to ``side`` pixels where it is longer (bicubic)."""
    from PIL import Image

    width, height = image.size
    shrink = side / min(width, height)
    if shrink >= 1:
        return image
    return image.resize((max(1, round(width * shrink)), max(1, round(height * shrink))), Image.Resampling.BICUBIC)


def _flip(direction: str):
    from PIL import Image

    return {"left-right": Image.Transpose.FLIP_LEFT_RIGHT, "top-bottom": Image.Transpose.FLIP_TOP_BOTTOM}[direction]


class OwnerImage:
    """The owner's whole image (RGB, after verifier's normalisation), framed every way ``bounds`` allows."""

    def __init__(self, image, bounds: FramingBounds, side: int, resolution: int | None = None):
        """``side``: the search's side; ``resolution``: the largest frame cut later (the model's resolution).
        Neither needs more than a few owner pixels per frame pixel, so no more is kept."""
        self.side, self.bounds, self.resolution = side, bounds, resolution or side
        self.full = _reduced(image, 2 * self.resolution) if self.resolution > side else None
        self._full_mirrored = None
        image = _reduced(image, 4 * side)
        self.image, self.mirrored = image, image.transpose(_flip("left-right"))
        self.pixels: np.ndarray | None = None  # the standard preparation, where ``open`` made it
        self._frames: tuple[list[Framing], torch.Tensor, torch.Tensor] | None = None
        self._masks: torch.Tensor | None = None  # each framing's overlap, flat (built with the frames)

    @classmethod
    def open(cls, path, bounds: FramingBounds, resolution: int) -> "OwnerImage":
        """The owner's file, normalised as ``verifier.images`` normalises it, framed for a ``resolution`` model;
        ``pixels`` is its standard preparation (``verifier.images.prepare_image``)."""
        from verifier.images import centre_square, load_rgb

        image = load_rgb(path)
        owner = cls(image, bounds, min(resolution, SEARCH_SIDE), resolution)
        owner.pixels = centre_square(image, resolution)
        return owner

    def upside_down(self) -> "OwnerImage":
        """The image's never-seen twin (``verifier.control``), framed the same ways."""
        kept = self.image if self.full is None else self.full
        twin = OwnerImage(kept.transpose(_flip("top-bottom")), self.bounds, self.side, self.resolution)
        twin.pixels = None if self.pixels is None else np.ascontiguousarray(self.pixels[::-1])
        return twin

    def frame(self, framing: Framing, side: int) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
        """The owner's pixels under ``framing`` on a ``side``-pixel grid: (pixels, (top, left, height, width)
        of the overlap in frame pixels), pixels outside the overlap zero; None where the overlap is too small.
        The framing's shift is in pixels of the search side, so one framing means the same at any ``side``."""
        from PIL import Image

        image = self._source(framing.mirror, side)
        width, height = image.size
        pixel = framing.scale * min(width, height) / side  # one frame pixel, in owner pixels
        x0 = width / 2 + (framing.dx * side / self.side - side / 2) * pixel
        y0 = height / 2 + (framing.dy * side / self.side - side / 2) * pixel
        left, top = max(0, math.ceil(-x0 / pixel - 1e-9)), max(0, math.ceil(-y0 / pixel - 1e-9))
        right = min(side, math.floor((width - x0) / pixel + 1e-9))
        bottom = min(side, math.floor((height - y0) / pixel + 1e-9))
        if right - left < SSIM_WINDOW or bottom - top < SSIM_WINDOW:
            return None
        box = (max(0.0, x0 + left * pixel), max(0.0, y0 + top * pixel), min(width, x0 + right * pixel),
               min(height, y0 + bottom * pixel))  # clamped: rounding must not step outside the image
        patch = image.resize((right - left, bottom - top), Image.Resampling.BICUBIC, box=box)
        pixels = np.zeros((side, side, 3), dtype=np.float32)
        pixels[top:bottom, left:right] = np.asarray(patch, dtype=np.float32) / 255.0
        return pixels, (top, left, bottom - top, right - left)

    def _source(self, mirror: bool, side: int):
        """The image a ``side``-pixel frame is cut from: the search's reduced copy up to the search side, the
        owner's full image above it (a model's resolution can exceed what the search keeps)."""
        if side <= self.side or self.full is None:
            return self.mirrored if mirror else self.image
        if not mirror:
            return self.full
        if self._full_mirrored is None:
            self._full_mirrored = self.full.transpose(_flip("left-right"))
        return self._full_mirrored

    def cut(self, framing: Framing, side: int) -> "Cut | None":
        """The owner's image cut at ``framing`` as a ``side``-pixel image to certify: the overlap resampled,
        the strip a frame reaching past the image leaves uncovered filled by repeating the overlap's edge
        pixels (the model needs a whole frame), and where the owner's pixels are; None where the overlap is
        too small."""
        framed = self.frame(framing, side)
        if framed is None:
            return None
        pixels, (top, left, height, width) = framed
        inner = pixels[top:top + height, left:left + width]
        return Cut(np.ascontiguousarray(np.pad(inner, ((top, side - top - height), (left, side - left - width), (0, 0)),
                                               mode="edge")), (top, left, height, width))

    def frames(self) -> tuple[list[Framing], torch.Tensor, torch.Tensor]:
        """Every framing of ``bounds`` whose overlap is large enough, its frame (F, 3, S, S) and overlap (F, 4)."""
        if self._frames is None:
            candidates, frames, overlaps = [], [], []
            for framing in self.bounds.framings(self.side):
                framed = self.frame(framing, self.side)
                if framed is None or framed[1][2] * framed[1][3] < self.bounds.min_overlap * self.side**2:
                    continue
                candidates.append(framing)
                frames.append(framed[0])
                overlaps.append(framed[1])
            self._frames = (candidates, to_side(np.stack(frames), self.side), torch.tensor(overlaps))
            # Each framing's overlap as a flat 0/1 mask, built once: every call of ``best`` screens with it.
            masks = torch.zeros_like(self._frames[1][:, :1])
            for row, (top, left, height, width) in enumerate(overlaps):
                masks[row, :, top:top + height, left:left + width] = 1
            self._masks = masks.expand_as(self._frames[1]).flatten(1)
        return self._frames

    @torch.no_grad()
    def best(self, generations: np.ndarray, screened: int = 8) -> tuple[np.ndarray, list[Framing]]:
        """Each generation's highest SSIM over the framings and the framing that reached it.

        The ``screened`` framings of highest masked correlation with a generation get the exact SSIM."""
        candidates, frames, overlaps = self.frames()
        searched = to_side(generations, self.side)
        correlation = masked_correlation(searched.flatten(1), frames.flatten(1), self._masks)  # (F, G)
        top = correlation.topk(min(screened, len(candidates)), dim=0).indices  # (K, G)
        repeated = searched.repeat_interleave(top.shape[0], dim=0)
        pairs = top.T.flatten()  # generation-major, like ``repeated``
        scores = ssim_pairs(repeated, frames[pairs], overlaps[pairs]).view(len(generations), -1)
        value, position = scores.max(dim=1)
        chosen = top.T.gather(1, position[:, None]).flatten()
        return value.numpy().astype(np.float64), [candidates[i] for i in chosen.tolist()]


@dataclass(frozen=True)
class Cut:
    """The owner's image cut at one framing (``OwnerImage.cut``), certified as an image of its own.

    ``pixels`` (S, S, 3) in [0, 1] is the whole frame the model is given; ``covered`` = (top, left, height,
    width) is where the owner's pixels are, the rest being the overlap's edge repeated. Nothing measured on a
    cut counts that strip: the owner does not hold it, and a witness that learns to draw smooth stripes
    would otherwise lower its error and raise its similarity there (docs/owner-copies.md, "Only the owner's
    pixels"). Errors count the latent cells wholly inside ``covered`` (``latent_weights``), similarity is
    scored on ``covered`` (``FramedSimilarity``), part windows reaching into the strip are not scored."""

    pixels: np.ndarray
    covered: tuple[int, int, int, int]

    @property
    def coverage(self) -> float:
        """The fraction of the frame the owner's pixels cover."""
        return self.covered[2] * self.covered[3] / (self.pixels.shape[0] * self.pixels.shape[1])

    def crop(self, image: np.ndarray) -> np.ndarray:
        """``image`` (..., S, S, C) cut to the covered part."""
        top, left, height, width = self.covered
        return image[..., top:top + height, left:left + width, :]

    def upside_down(self) -> "Cut":
        """The cut's never-seen twin (``verifier.control``): pixels and covered part turned upside down."""
        top, left, height, width = self.covered
        return Cut(np.ascontiguousarray(self.pixels[::-1]), (self.pixels.shape[0] - top - height, left, height, width))

    def latent_weights(self, size: tuple[int, int]) -> torch.Tensor:
        """(1, h, w) of 0/1 on a latent grid of ``size``: 1 where the latent cell's pixels all lie in ``covered``."""
        covered = torch.zeros(1, 1, *self.pixels.shape[:2])
        top, left, height, width = self.covered
        covered[..., top:top + height, left:left + width] = 1
        pooled = torch.nn.functional.adaptive_avg_pool2d(covered, size)[0]
        return (pooled > 1 - 1e-6).float()


def pixels_of(image) -> np.ndarray:
    """The pixels the model is given for ``image``: prepared pixels as they are, a ``Cut``'s whole frame."""
    return image.pixels if isinstance(image, Cut) else image


def latent_weights(images: list, z0: torch.Tensor) -> torch.Tensor | None:
    """Per-image weights of the latent cells an error counts, (B, 1, h, w) on ``z0``'s device: None (every
    cell) unless some image is a ``Cut``."""
    if not any(isinstance(image, Cut) for image in images):
        return None
    size = tuple(z0.shape[-2:])
    return torch.stack([image.latent_weights(size) if isinstance(image, Cut) else torch.ones(1, *size)
                        for image in images]).to(z0.device)


# (log scale span either way, scale steps, shift step in compared pixels, shift steps either way), each pass
# centred on the best so far: half a grid step of scale and a pixel of shift at 0.25 px, then finer.
REFINE_PASSES = ((0.03, 7, 0.25, 4), (0.01, 5, 0.05, 5))
REFINE_BYTES = 2**28  # the most memory one batch of the refinement's SSIM maps may take
REFINE_SIDE = 128  # the refinement compares at most this many pixels a side


@torch.no_grad()
def refine(owner: OwnerImage, generation: np.ndarray, around: Framing) -> tuple[float, Framing]:
    """The framing near ``around`` (a grid framing) under which the owner's image best matches ``generation``
    (H, W, 3 in [0, 1], at the model's resolution), to a fraction of a pixel: SSIM over the overlap at the
    generation's resolution, at most ``REFINE_SIDE`` (a twentieth of a pixel there is a third of one at 768
    px, well inside a latent pixel), over ``REFINE_PASSES``, never leaving ``owner.bounds``.

    The grid moves by whole search pixels and 5.7% scale steps, while a model that memorized its training
    crop reproduces it to the pixel: the framing that regenerates a memorized image lies between grid
    points (docs/owner-copies.md, "Between the grid's framings")."""
    target = torch.from_numpy(np.ascontiguousarray(generation, dtype=np.float32)).permute(2, 0, 1)[None]
    if target.shape[-1] > REFINE_SIDE:
        target = torch.nn.functional.interpolate(target, size=(REFINE_SIDE, REFINE_SIDE), mode="area")
    side = target.shape[-1]
    score, best = -math.inf, around
    for scale_span, scale_steps, step, reach in REFINE_PASSES:
        offsets = [k * step * owner.side / side for k in range(-reach, reach + 1)]  # compared -> search pixels
        candidates = [Framing(float(best.scale * math.exp(log_scale)), best.dy + oy, best.dx + ox, best.mirror)
                      for log_scale in np.linspace(-scale_span, scale_span, scale_steps)
                      for oy in offsets for ox in offsets]
        kept = []
        for candidate in candidates:
            found = owner.frame(candidate, side)
            record = candidate.record(owner.side)
            if found is not None and owner.bounds.contains(record["scale"], record["shift"],
                                                           found[1][2] * found[1][3] / side**2, candidate.mirror):
                kept.append((candidate, found))
        if not kept:
            break
        # Scored a bounded number at a time: SSIM keeps about a dozen maps per frame, 3 MB each at 512 px.
        chunk = max(1, REFINE_BYTES // (16 * 3 * side * side * 4))
        scores = torch.cat([ssim_pairs(target.expand(len(part), -1, -1, -1).contiguous(), torch.from_numpy(
            np.stack([found[0] for _, found in part])).permute(0, 3, 1, 2), torch.tensor([found[1] for _, found in part]))
            for part in (kept[start:start + chunk] for start in range(0, len(kept), chunk))])
        index = int(scores.argmax())
        if float(scores[index]) > score:
            score, best = float(scores[index]), kept[index][0]
    return score, best


def ssim_pairs(generations: torch.Tensor, frames: torch.Tensor, overlaps: torch.Tensor) -> torch.Tensor:
    """SSIM of each generation against its framed owner image, over that framing's overlap.

    ``generations`` and ``frames`` (N, 3, S, S) in [0, 1]; ``overlaps`` (N, 4) = top, left, height, width.
    Returns (N,), equal to ``skimage.metrics.structural_similarity(channel_axis=2, data_range=1)`` of the
    two overlaps: a uniform 7x7 window, sample covariance, the map's mean over windows inside the overlap.
    """
    window, constant_1, constant_2 = SSIM_WINDOW, 0.01**2, 0.03**2
    covariance_norm = window * window / (window * window - 1)
    side = frames.shape[-1]
    positions = side - window + 1
    index = torch.arange(positions)
    top, left, height, width = overlaps.unbind(1)
    rows = (index[None] >= top[:, None]) & (index[None] <= (top + height - window)[:, None])
    columns = (index[None] >= left[:, None]) & (index[None] <= (left + width - window)[:, None])
    mask = (rows[:, :, None] & columns[:, None, :]).to(frames.dtype)[:, None]  # (N, 1, P, P)

    def mean(values: torch.Tensor) -> torch.Tensor:  # a separable 7x7 box filter, valid positions only
        pool = torch.nn.functional.avg_pool2d
        return pool(pool(values, (window, 1), stride=1), (1, window), stride=1)

    x, y = generations, frames
    mean_x, mean_y = mean(x), mean(y)
    var_x = covariance_norm * (mean(x * x) - mean_x**2)
    var_y = covariance_norm * (mean(y * y) - mean_y**2)
    cov = covariance_norm * (mean(x * y) - mean_x * mean_y)
    ssim_map = ((2 * mean_x * mean_y + constant_1) * (2 * cov + constant_2)) / (
        (mean_x**2 + mean_y**2 + constant_1) * (var_x + var_y + constant_2))  # (N, 3, P, P)
    return (ssim_map * mask).sum(dim=(1, 2, 3)) / (3 * mask.sum(dim=(1, 2, 3)))


def masked_correlation(generations: torch.Tensor, frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every generation with every framed owner image over the framing's overlap.

    ``generations`` (G, D) and ``frames`` (F, D) flattened, ``masks`` (F, D) of 0/1; returns (F, G). Three
    matrix products: the cheap screen before the exact SSIM.
    """
    count = masks.sum(dim=1, keepdim=True)
    sum_x, sum_xx = masks @ generations.T, masks @ (generations * generations).T
    sum_y, sum_yy = frames.sum(dim=1, keepdim=True), (frames * frames).sum(dim=1, keepdim=True)
    sum_xy = frames @ generations.T
    numerator = count * sum_xy - sum_x * sum_y
    denominator = ((count * sum_xx - sum_x**2).clamp_min(1e-12) * (count * sum_yy - sum_y**2).clamp_min(1e-12)).sqrt()
    return numerator / denominator


def to_side(images: np.ndarray, side: int) -> torch.Tensor:
    """(N, H, W, 3) float images in [0, 1] as (N, 3, side, side), resized like verifier resizes images."""
    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    if batch.shape[-1] != side:
        batch = torch.nn.functional.interpolate(batch, size=(side, side), mode="bicubic", antialias=True,
                                                align_corners=False).clamp(0, 1)
    return batch


class FramedSimilarity:
    """A run's similarity metric applied where the owner's image is framed best for each generation.

    Each generation's framing is the one of highest SSIM at the search side (``OwnerImage.best``); the
    metric then scores the generation against the owner's pixels under that framing, both cut to the
    overlap, at the generation's own resolution. It is called like the metric, with an ``OwnerImage`` (or a
    ``Cut``: its covered part) as the target, and says the same of its scores (direction, threshold, weights)."""

    def __init__(self, metric):
        self.metric = metric
        self.name, self.higher_is_similar = metric.name, metric.higher_is_similar
        self.default_threshold, self.threshold_source = metric.default_threshold, metric.threshold_source
        self.weights = metric.weights

    def framings(self, generations: np.ndarray, owner: OwnerImage) -> list[Framing]:
        return owner.best(generations)[1]

    def __call__(self, generations: np.ndarray, owner) -> np.ndarray:
        if isinstance(owner, Cut):  # a cut: the covered part only
            return np.asarray(self.metric(owner.crop(generations), owner.crop(owner.pixels)), dtype=np.float64)
        if not isinstance(owner, OwnerImage):  # prepared pixels: the owner's framing only, as the metric scores
            return np.asarray(self.metric(generations, owner), dtype=np.float64)
        side = generations.shape[1]
        scores = []
        for generation, framing in zip(generations, self.framings(generations, owner)):
            pixels, (top, left, height, width) = owner.frame(framing, side) or (None, (0, 0, 0, 0))
            if pixels is None or min(height, width) < SSIM_WINDOW:
                scores.append(float("nan"))  # cannot happen for a framing the search kept; never a replication
                continue
            crop = (slice(top, top + height), slice(left, left + width))
            scores.append(float(self.metric(generation[None][(slice(None), *crop)], pixels[crop])[0]))
        return np.asarray(scores, dtype=np.float64)
