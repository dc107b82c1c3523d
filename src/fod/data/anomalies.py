"""Synthetic anomalies on good images, for choosing settings without test labels.

A detector trained on good images only has no defects to validate on. These functions make
some: each anomaly is a region shaped by thresholded Perlin noise (irregular blobs, as real
stains, scratches and chips are) in which the image is blended with one of three sources,

- ``paste``: another good image, shifted and flipped (structure from the wrong place, as
  cut-paste augmentation makes);
- ``tone``: the image itself with its brightness and contrast changed (stains, uneven areas);
- ``texture``: procedural coloured noise (foreign matter).

The mask is exactly the set of pixels that changed by more than :data:`MIN_CHANGE` in some
channel, so a validation metric computed on it is honest to the pixel. Everything is drawn
from one seeded generator: the same seed gives the same anomalies on every machine.

Placed ``content`` (:data:`PLACEMENTS`), an anomaly falls only where its image has texture
(:func:`content_mask`): real defects sit on the product, and an anomaly on the plain
background around an object is found by every score alike, so it cannot tell scores apart.

>>> images, masks = synthetic_anomalies(good, count=64, seed=0)  # good: (N, 3, S, S) in [0, 1]
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import uniform_filter
from torch import Tensor

#: The kinds of synthetic anomaly, drawn in turn.
KINDS = ("paste", "tone", "texture")
#: Smallest change of a pixel (in [0, 1] units, any channel) that counts as anomalous.
MIN_CHANGE = 2.0 / 255.0
#: Fraction of the image an anomaly may cover (drawn again when outside).
MIN_AREA, MAX_AREA = 0.004, 0.12
#: Draws of a region before giving up on the area bounds.
MAX_TRIES = 20
#: Where an anomaly may fall: ``content``, only where the image has texture
#: (:func:`content_mask`); ``anywhere``, the whole image.
PLACEMENTS: tuple[str, ...] = ("content", "anywhere")
#: A pixel has texture where the standard deviation of the grey values around it is more than
#: this share of the image's 95th percentile of that deviation ...
CONTENT_SHARE = 0.2
#: ... taken over a square of this side at input 256 (scaled with the image, kept odd).
CONTENT_WINDOW = 9


def perlin_noise(
    height: int, width: int, res: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """(height, width) gradient noise with ``res`` lattice cells per axis, roughly in [-1, 1].

    Random unit gradients sit on a (res_y + 1) x (res_x + 1) lattice; each pixel blends the
    dot products of its four corners' gradients with its offsets, weighted by the quintic
    fade 6t^5 - 15t^4 + 10t^3 (Perlin's improved noise).
    """
    ry, rx = int(res[0]), int(res[1])
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.arange(height) * (ry / height)
    x = np.arange(width) * (rx / width)
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[yi[:, None] + dy, xi[None, :] + dx]
        return g[..., 0] * (yf - dy) + g[..., 1] * (xf - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (6.0 * t - 15.0) + 10.0)

    u, v = fade(xf), fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return np.sqrt(2.0) * (top * (1 - v) + bottom * v)


def anomaly_region(
    height: int, width: int, rng: np.random.Generator, max_area: float = MAX_AREA
) -> np.ndarray:
    """A boolean (height, width) region: Perlin noise above a threshold, covering between
    :data:`MIN_AREA` and ``max_area`` of the image (the last draw's region, cut to its
    largest allowed size, after :data:`MAX_TRIES` draws)."""
    if not MIN_AREA < max_area <= 1.0:
        raise ValueError(f"max_area must be in ({MIN_AREA}, 1], got {max_area}")
    region = np.zeros((height, width), dtype=bool)
    for _ in range(MAX_TRIES):
        res = (int(2 ** rng.integers(1, 5)), int(2 ** rng.integers(1, 5)))
        noise = perlin_noise(height, width, res, rng)
        region = noise > rng.uniform(0.35, 0.6)
        area = region.mean()
        if MIN_AREA <= area <= max_area:
            return region
    if region.mean() > max_area:  # keep the strongest part of the last draw
        keep = int(max_area * height * width)
        cut = np.partition(noise.ravel(), -keep)[-keep]
        region = noise >= cut
    if region.mean() < MIN_AREA:  # a small disc where the noise peaks
        cy, cx = np.unravel_index(int(np.argmax(noise)), noise.shape)
        r = np.sqrt(2 * MIN_AREA * height * width / np.pi)
        yy, xx = np.mgrid[:height, :width]
        region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return region


def content_mask(image: np.ndarray) -> np.ndarray:
    """(H, W) boolean: where ``image`` (3, H, W) has texture, i.e. the local standard deviation
    of its grey values exceeds :data:`CONTENT_SHARE` of its 95th percentile. A plain background
    has none; a texture filling the image has it nearly everywhere; a flat image counts as
    texture everywhere, so that anomalies can still be placed on it. An object covering less
    than 5% of the image sets no percentile of its own, so the mask then spreads over the
    background's noise: the placement falls back towards ``anywhere``."""
    grey = np.asarray(image, dtype=np.float64).mean(axis=0)
    side = max(3, round(CONTENT_WINDOW * grey.shape[1] / 256) | 1)
    mean = uniform_filter(grey, side)
    spread = np.sqrt(np.clip(uniform_filter(grey * grey, side) - mean * mean, 0.0, None))
    level = CONTENT_SHARE * np.quantile(spread, 0.95)
    if level <= 0.0:
        return np.ones(grey.shape, dtype=bool)
    return spread > level


def placed_region(
    height: int,
    width: int,
    rng: np.random.Generator,
    max_area: float = MAX_AREA,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """An :func:`anomaly_region` cut to the ``allowed`` pixels: drawn again (up to
    :data:`MAX_TRIES` times) until the cut keeps at least :data:`MIN_AREA` of the image; the
    last draw uncut when none does (an image with too little texture)."""
    if allowed is None:
        return anomaly_region(height, width, rng, max_area)
    for _ in range(MAX_TRIES):
        region = anomaly_region(height, width, rng, max_area)
        kept = region & allowed
        if kept.mean() >= MIN_AREA:
            return kept
    return region


def _source(
    kind: str, image: np.ndarray, other: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(3, H, W) content to blend into ``image`` for one anomaly of ``kind``."""
    _, h, w = image.shape
    if kind == "paste":
        src = np.roll(other, (int(rng.integers(h)), int(rng.integers(w))), axis=(1, 2))
        if rng.random() < 0.5:
            src = src[:, :, ::-1]
        if rng.random() < 0.5:
            src = src[:, ::-1, :]
        return src
    if kind == "tone":
        mean = image.mean(axis=(1, 2), keepdims=True)
        contrast = rng.uniform(0.4, 1.6)
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.35)
        return (image - mean) * contrast + mean + shift
    res = int(2 ** rng.integers(2, 6))
    base = perlin_noise(h, w, (res, res), rng)
    colors = rng.uniform(0.0, 1.0, size=(2, 3, 1, 1))
    t = (base[None] + 1.0) / 2.0
    return colors[0] * (1 - t) + colors[1] * t


def add_anomaly(
    image: np.ndarray,
    other: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    max_area: float = MAX_AREA,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One anomaly of ``kind`` on ``image`` (3, H, W) in [0, 1], covering at most ``max_area``
    of it and, where ``allowed`` (H, W) is given, only its pixels (:func:`placed_region`);
    ``other`` is a second good image (the ``paste`` source). Returns the new image and its
    mask: the pixels that changed by more than :data:`MIN_CHANGE` in some channel."""
    if kind not in KINDS:
        raise ValueError(f"anomaly kind must be one of {', '.join(KINDS)}, got {kind!r}")
    image = np.asarray(image, dtype=np.float32)
    _, h, w = image.shape
    region = placed_region(h, w, rng, max_area, allowed)
    opacity = rng.uniform(0.6, 1.0)
    src = np.clip(_source(kind, image, np.asarray(other, dtype=np.float32), rng), 0.0, 1.0)
    out = image.copy()
    blended = (1.0 - opacity) * image + opacity * src
    out[:, region] = blended[:, region].astype(np.float32)
    mask = np.abs(out - image).max(axis=0) > MIN_CHANGE
    out[:, ~mask] = image[:, ~mask]  # changes too small to count are undone
    return out, mask


def synthetic_anomalies(
    images: Tensor,
    count: int,
    seed: int = 0,
    max_area: float = MAX_AREA,
    placement: str = "anywhere",
) -> tuple[Tensor, Tensor, list[str]]:
    """``count`` anomalous images made from good ``images`` (N, 3, S, S) in [0, 1], cycling
    through the images and through :data:`KINDS`, each anomaly covering at most ``max_area``
    of its image, placed by ``placement`` (:data:`PLACEMENTS`). Returns the images, their
    (count, S, S) boolean masks and each one's kind. An anomaly that changed too few pixels
    (a ``tone`` change on a flat black area) is drawn again, up to :data:`MAX_TRIES` times."""
    n = int(images.shape[0])
    if n < 1 or count < 1:
        raise ValueError(f"need at least one good image and count >= 1, got {n} and {count}")
    if placement not in PLACEMENTS:
        raise ValueError(
            f"anomaly placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}"
        )
    rng = np.random.default_rng(int(seed))
    arrays = images.detach().cpu().float().numpy()
    allowed = [content_mask(a) if placement == "content" else None for a in arrays]
    out, masks, kinds = [], [], []
    for i in range(count):
        k = i % n
        for attempt in range(MAX_TRIES):
            kind = KINDS[(i + attempt) % len(KINDS)]
            other = arrays[int(rng.integers(n))] if n > 1 else arrays[k]
            img, mask = add_anomaly(arrays[k], other, kind, rng, max_area, allowed[k])
            if mask.mean() >= MIN_AREA / 4:
                break
        out.append(img)
        masks.append(mask)
        kinds.append(kind)
    return torch.from_numpy(np.stack(out)), torch.from_numpy(np.stack(masks)), kinds


__all__ = [
    "KINDS",
    "MIN_CHANGE",
    "PLACEMENTS",
    "add_anomaly",
    "anomaly_region",
    "content_mask",
    "perlin_noise",
    "placed_region",
    "synthetic_anomalies",
]
