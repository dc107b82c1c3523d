"""Seeded generator of small anomaly-detection data sets in the MVTec AD layout.

Why: the demo and the end-to-end tests need data that ships with the package (nothing to
download), comes out as the same bytes on every run, has exact pixel masks, and is hard enough
that a trivial global statistic (mean brightness, contrast) fails while a method that looks at
local and global discrepancies succeeds. The three categories cover the three kinds of
discrepancy FOD is built for: a stochastic texture (``fabric``), a regular pattern (``tiles``)
and an object whose parts have fixed places (``board``, with "logical" defects: a part missing,
moved or added).

Every image is drawn from its own ``numpy.random.Generator`` seeded by (seed, category, split,
index), so a test image does not change when ``n_train`` changes. Inside :func:`render` the
defect-free scene is drawn first and the defect afterwards from the same generator, so the same
generator state gives the same picture with and without the defect: the tests use that to check
that a defect changes the image only inside its mask.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from fod.errors import DataError
from fod.io import atomic_write, ensure_folder

__all__ = ["CATEGORIES", "DEFECTS", "CategorySpec", "generate", "image_rng", "render"]


@dataclass(frozen=True)
class CategorySpec:
    """What a generated category looks like and which defect types its test split has."""

    description: str
    defects: tuple[str, ...]


DEFECTS: dict[str, str] = {
    "scratch": "a thin curved line, slightly lighter or darker than the surface",
    "hole": "a small irregular hole or chip: darker, the surface pattern blurred away",
    "contamination": "a blotch of a foreign, mottled texture laid semi-transparently on top",
    "color": "a soft-edged region whose colour is shifted, the surface pattern kept",
    "misaligned": "one tile shifted by a few pixels and rotated by a few degrees",
    "missing": "a component absent (mask: where it should be); its pads and outline remain",
    "misplaced": "a component moved to another free place (mask: old and new place)",
    "extra": "an additional component on a free place of the board",
}

CATEGORIES: dict[str, CategorySpec] = {
    "fabric": CategorySpec(
        "woven twill fabric: a stochastic texture with an oriented weave, random phase",
        ("scratch", "hole", "contamination", "color"),
    ),
    "tiles": CategorySpec(
        "ceramic tiles with grout lines: a regular pattern whose grid phase jitters",
        ("scratch", "hole", "color", "misaligned"),
    ),
    "board": CategorySpec(
        "circuit board with a chip, a capacitor, a resistor and two screws in fixed places",
        ("scratch", "contamination", "missing", "misplaced", "extra"),
    ),
}

_MIN_SIZE = 32
_SENSOR_NOISE = 0.008  # std of the per-pixel noise added to every image, in [0, 1] units
_MASK_LEVEL = 0.25  # a pixel belongs to a defect mask where the defect's shape alpha >= this
_EDGE_SIGMA = 0.7  # blur of defect shapes: anti-aliased edges, change stays within ~2 px


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def image_rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """The generator of one image, independent of every other image and of the split sizes.

    ``split`` is the folder below the category, e.g. ``"train/good"`` or ``"test/hole"``.
    CRC-32 (not ``hash``) keeps the streams the same across interpreter runs.
    """
    key = [int(seed), zlib.crc32(category.encode()), zlib.crc32(split.encode()), int(index)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


def render(
    category: str, rng: np.random.Generator, size: int = 128, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image: ``(size, size, 3)`` uint8 RGB and a ``(size, size)`` bool defect mask.

    The defect-free scene (including its sensor noise and brightness) is drawn from ``rng``
    before the defect, so two generators in the same state give the same image with
    ``defect=None`` and with a defect everywhere except near the mask.
    """
    spec = _spec(category)
    if defect is not None and defect not in spec.defects:
        raise DataError(
            f"defect {defect!r} is not generated for category {category!r}; "
            f"choose one of {', '.join(spec.defects)}"
        )
    if size < _MIN_SIZE:
        raise DataError(f"image_size {size} is too small for the generator; use >= {_MIN_SIZE}")
    cv = _Canvas.make(size)
    scene = _SCENES[category](cv, rng)
    noise = rng.normal(0.0, _SENSOR_NOISE, (size, size, 3))
    gain = rng.uniform(0.94, 1.06)
    contrast = rng.uniform(0.92, 1.08)
    base = scene.compose(None, rng)[0]
    mean = base.mean(axis=(0, 1))
    if defect is None:
        img, mask = base, np.zeros((size, size), dtype=bool)
    else:
        img, mask = scene.compose(defect, rng)
        if not mask.any():  # every defective image must have a mask; a generator bug otherwise
            raise AssertionError(f"empty mask for {category}/{defect}")
    img = (img - mean) * contrast + mean * gain + noise
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), mask


def generate(
    out: str | Path,
    categories: Sequence[str] = ("fabric", "tiles", "board"),
    image_size: int = 128,
    n_train: int = 60,
    n_test_good: int = 15,
    n_test_per_defect: int = 6,
    seed: int = 0,
) -> Path:
    """Write the categories in the MVTec AD layout below ``out`` and return ``out``.

    Layout: ``<cat>/train/good/000.png``, ``<cat>/test/good/*.png``, ``<cat>/test/<defect>/*.png``
    and ``<cat>/ground_truth/<defect>/<stem>_mask.png`` (L mode, 0/255). Running it again into
    the same folder gives the same bytes; numbered PNGs left over from an earlier run with
    larger counts are removed, so the folder always holds exactly one data set.
    """
    out = Path(out)
    if isinstance(categories, str):
        categories = (categories,)
    for name in categories:
        _spec(name)
    if image_size < _MIN_SIZE:
        raise DataError(f"image_size {image_size} is too small; use >= {_MIN_SIZE}")
    if n_train < 1:
        raise DataError(f"n_train must be >= 1, got {n_train}")
    if n_test_good < 0 or n_test_per_defect < 0:
        raise DataError("n_test_good and n_test_per_defect must be >= 0")
    if seed < 0:
        raise DataError(f"seed must be >= 0, got {seed}")

    for name in categories:
        root = out / name
        written: dict[Path, set[str]] = {}
        plan: list[tuple[str, str | None, int]] = [("train/good", None, n_train)]
        plan.append(("test/good", None, n_test_good))
        plan += [(f"test/{d}", d, n_test_per_defect) for d in CATEGORIES[name].defects]
        for split, defect, count in plan:
            folder = root / split
            ensure_folder(folder)  # even when empty: loaders list it
            names = written.setdefault(folder, set())
            if defect is not None:
                gt = root / "ground_truth" / defect
                ensure_folder(gt)
                gt_names = written.setdefault(gt, set())
            width = max(3, len(str(max(count - 1, 0))))
            for i in range(count):
                img, mask = render(name, image_rng(seed, name, split, i), image_size, defect)
                stem = f"{i:0{width}d}"
                _write_png(folder / f"{stem}.png", Image.fromarray(img))  # uint8 (H, W, 3): RGB
                names.add(f"{stem}.png")
                if defect is not None:
                    _write_png(gt / f"{stem}_mask.png", Image.fromarray(mask * np.uint8(255)))
                    gt_names.add(f"{stem}_mask.png")
        _remove_stale(written)
    return out


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

_OUR_FILE = re.compile(r"^\d+(_mask)?\.png$")


def _write_png(path: Path, image: Image.Image) -> None:
    """Fixed PNG options and no metadata, so that equal pixels give equal bytes."""
    atomic_write(path, lambda p: image.save(p, format="PNG", compress_level=6, optimize=False))


def _remove_stale(written: dict[Path, set[str]]) -> None:
    """Drop numbered PNGs of an earlier, larger run; nothing else in the folders is touched."""
    for folder, names in written.items():
        for path in folder.iterdir():
            if path.is_file() and _OUR_FILE.match(path.name) and path.name not in names:
                path.unlink()


def _spec(category: str) -> CategorySpec:
    try:
        return CATEGORIES[category]
    except KeyError:
        raise DataError(
            f"unknown synthetic category {category!r}; choose from {', '.join(CATEGORIES)}"
        ) from None


# --------------------------------------------------------------------------------------------
# Drawing primitives (float RGB images in [0, 1], pixel-centre coordinates)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Canvas:
    size: int
    s: float  # lengths below are given for 128 px and multiplied by s
    xx: np.ndarray
    yy: np.ndarray

    @staticmethod
    def make(size: int) -> _Canvas:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        return _Canvas(size, size / 128.0, xx, yy)


def _noise(rng: np.random.Generator, cv: _Canvas, sigma: float) -> np.ndarray:
    """Periodic Gaussian-filtered white noise with unit std: grain (small sigma) or clouds.

    Large sigmas are filtered on a coarser grid and interpolated up: it looks the same and
    costs a fraction of a wide kernel.
    """
    step = max(1, int(sigma // 3))
    m = -(-cv.size // step)
    n = rng.standard_normal((m, m))
    if sigma > 0:
        n = ndimage.gaussian_filter(n, sigma / step, mode="wrap")
    if step > 1:
        n = ndimage.zoom(n, cv.size / m, order=1, mode="grid-wrap", grid_mode=True)
    return n / (n.std() + 1e-12)


def _soft_box(lx: np.ndarray, ly: np.ndarray, hx: float, hy: float) -> np.ndarray:
    """Anti-aliased rectangle of half sizes hx, hy in local coordinates."""
    ax = np.clip(hx - np.abs(lx) + 0.5, 0.0, 1.0)
    ay = np.clip(hy - np.abs(ly) + 0.5, 0.0, 1.0)
    return ax * ay


def _soft_disk(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased disk of radius r centred at (cx, cy)."""
    return np.clip(r - np.hypot(xx - cx, yy - cy) + 0.5, 0.0, 1.0)


def _over(img: np.ndarray, alpha: np.ndarray, rgb: np.ndarray | Sequence[float]) -> np.ndarray:
    """Alpha-composite ``rgb`` (a colour or an image) over a copy of ``img``.

    Only the bounding box of ``alpha > 0`` is computed: most layers are small parts.
    """
    out = img.copy()
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return out
    cols = np.flatnonzero(alpha.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    colour = np.asarray(rgb, dtype=np.float64)
    if colour.ndim == 3:
        colour = colour[box]
    out[box] += alpha[box][..., None] * (colour - out[box])
    return out


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114])


def _dynamic_range(img: np.ndarray) -> float:
    """2nd to 98th percentile of luminance: what defect contrasts are measured against."""
    lo, hi = np.percentile(_luma(img), [2, 98])
    return float(max(hi - lo, 0.05))


def _shape_alpha(shape: np.ndarray) -> np.ndarray:
    """Blur a binary shape a little (anti-aliasing); tiny values are cut to exactly 0."""
    a = ndimage.gaussian_filter(shape.astype(np.float64), _EDGE_SIGMA)
    a[a < 0.01] = 0.0
    return a


def _blob(rng: np.random.Generator, cv: _Canvas, radius: float, margin: float = 2.0) -> np.ndarray:
    """Irregular closed blob: a circle whose radius wobbles with a few low angular harmonics."""
    lo = radius * 1.5 + margin
    cx, cy = rng.uniform(lo, cv.size - lo, 2)
    amps = rng.uniform(0.0, 0.22, 3) / np.arange(2, 5)
    phases = rng.uniform(0.0, 2 * np.pi, 3)
    dx, dy = cv.xx - cx, cv.yy - cy
    theta = np.arctan2(dy, dx)
    r = radius * (
        1.0
        + sum(a * np.cos(k * theta + p) for a, p, k in zip(amps, phases, (2, 3, 4), strict=True))
    )
    return np.hypot(dx, dy) <= r


def _curve(rng: np.random.Generator, cv: _Canvas, length: float, width: float) -> np.ndarray:
    """Alpha of a thin quadratic Bezier curve of the given length and width."""
    n = cv.size
    theta = rng.uniform(0.0, np.pi)
    half = 0.5 * length * np.array([np.cos(theta), np.sin(theta)])
    mid = rng.uniform(np.abs(half) + 3.0, n - np.abs(half) - 3.0)
    bend = rng.uniform(-0.2, 0.2) * length * np.array([-np.sin(theta), np.cos(theta)])
    t = np.linspace(0.0, 1.0, int(4 * length) + 8)[:, None]
    p0, p2 = mid - half, mid + half
    p1 = mid + 2 * bend  # the curve passes through mid + bend
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    pad = width + 3.0
    x0, y0 = np.maximum(np.floor(pts.min(axis=0) - pad), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(pts.max(axis=0) + pad), n - 1).astype(int)
    bx, by = cv.xx[y0 : y1 + 1, x0 : x1 + 1], cv.yy[y0 : y1 + 1, x0 : x1 + 1]
    d2 = (bx[..., None] - pts[:, 0]) ** 2 + (by[..., None] - pts[:, 1]) ** 2
    d = np.sqrt(d2.min(axis=-1))
    alpha = np.zeros((n, n))
    alpha[y0 : y1 + 1, x0 : x1 + 1] = np.clip(width / 2 - d + 0.5, 0.0, 1.0)
    return alpha


@dataclass(frozen=True)
class _Style:
    """Per-category look of the local defects (fields for defects a category lacks are unused).

    Contrasts are fractions of the image's own dynamic range, so a defect is equally hard to
    see on a dark board and on light tiles.
    """

    scratch_sign: float  # +1 lighter, -1 darker, 0 either
    scratch_contrast: tuple[float, float]  # in units of the image's dynamic range
    color_shift: tuple[float, float]  # likewise
    hole_rgb: tuple[float, float, float]
    stain_rgb: tuple[float, float, float]


def _local_defect(
    name: str, img: np.ndarray, cv: _Canvas, rng: np.random.Generator, style: _Style
) -> tuple[np.ndarray, np.ndarray]:
    """Scratch, hole, contamination or colour shift on ``img``; returns (image, mask)."""
    rng_range = _dynamic_range(img)
    n, s = cv.size, cv.s
    if name == "scratch":
        length = rng.uniform(0.3, 0.45) * n
        width = max(1.0, rng.uniform(1.7, 2.4) * s)
        alpha = _curve(rng, cv, length, width)
        sign = style.scratch_sign or rng.choice([-1.0, 1.0])
        delta = sign * rng.uniform(*style.scratch_contrast) * rng_range
        # fade in and out along the curve like a real scratch would; cheap: modulate by noise
        fade = np.clip(0.85 + 0.2 * _noise(rng, cv, 3.0 * s), 0.6, 1.0)
        target = np.clip(img + delta, 0.0, 1.0)
        return _over(img, alpha * fade, target), alpha >= _MASK_LEVEL
    if name == "hole":
        shape = _blob(rng, cv, rng.uniform(0.045, 0.065) * n)
        alpha = _shape_alpha(shape)
        k = rng.uniform(0.45, 0.6)
        blurred = ndimage.gaussian_filter(img, (1.2 * s, 1.2 * s, 0))
        rim = ndimage.gaussian_filter(shape.astype(np.float64), 1.5 * s)  # darker towards centre
        target = blurred * (1 - k * (0.6 + 0.4 * rim[..., None])) + k * np.asarray(style.hole_rgb)
        return _over(img, alpha, target), alpha >= _MASK_LEVEL
    if name == "contamination":
        shape = _blob(rng, cv, rng.uniform(0.06, 0.085) * n)
        alpha = _shape_alpha(shape)
        mottle = _noise(rng, cv, 0.8 * s)  # fine and isotropic: unlike any surface here
        patchy = np.clip(0.8 + 0.25 * _noise(rng, cv, 3.0 * s), 0.4, 1.0)
        stain = np.asarray(style.stain_rgb) * (1.0 + 0.3 * mottle[..., None])
        opacity = rng.uniform(0.55, 0.7)
        return _over(img, alpha * patchy * opacity, np.clip(stain, 0, 1)), alpha >= _MASK_LEVEL
    if name == "color":
        shape = _blob(rng, cv, rng.uniform(0.06, 0.095) * n)
        alpha = _shape_alpha(shape)
        direction = rng.standard_normal(3)
        direction -= direction.mean()  # a change of hue, not only of brightness
        direction /= np.linalg.norm(direction)
        shift = direction * rng.uniform(*style.color_shift) * rng_range
        target = np.clip(img + shift, 0.0, 1.0)
        return _over(img, alpha, target), alpha >= _MASK_LEVEL
    raise AssertionError(f"not a local defect: {name}")


class _Scene:
    """A defect-free scene drawn at construction; ``compose`` adds a defect on request."""

    style: _Style

    def __init__(self, cv: _Canvas, rng: np.random.Generator) -> None:
        self.cv = cv

    def base(self) -> np.ndarray:
        raise NotImplementedError

    def compose(
        self, defect: str | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        img = self.base()
        if defect is None:
            return img, np.zeros(img.shape[:2], dtype=bool)
        return _local_defect(defect, img, self.cv, rng, self.style)


# --------------------------------------------------------------------------------------------
# fabric: woven twill
# --------------------------------------------------------------------------------------------


class _Fabric(_Scene):
    style = _Style(
        scratch_sign=1.0,
        scratch_contrast=(0.5, 0.6),
        color_shift=(0.3, 0.45),
        hole_rgb=(0.08, 0.07, 0.06),
        stain_rgb=(0.30, 0.22, 0.10),
    )

    def __init__(self, cv: _Canvas, rng: np.random.Generator) -> None:
        super().__init__(cv, rng)
        s = cv.s
        period = max(3.5, 6.0 * s)
        angle = np.deg2rad(rng.uniform(-3.0, 3.0))
        ox, oy = rng.uniform(0.0, 4 * period, 2)  # random phase of the weave
        u = (cv.xx * np.cos(angle) + cv.yy * np.sin(angle) + ox) / period
        v = (-cv.xx * np.sin(angle) + cv.yy * np.cos(angle) + oy) / period
        iu, iv = np.floor(u), np.floor(v)
        fu, fv = u - iu, v - iv
        n_threads = 64
        warp_gain = 1.0 + 0.06 * rng.standard_normal(n_threads)
        weft_gain = 1.0 + 0.06 * rng.standard_normal(n_threads)
        ju, jv = iu.astype(int) % n_threads, iv.astype(int) % n_threads
        warp_up = ((iu - iv) % 4) < 2  # 2/2 twill: the diagonal ribs of denim or gabardine
        su, sv = np.sin(np.pi * fu), np.sin(np.pi * fv)  # round thread cross-sections
        prof_w = np.sqrt(su) * (0.8 + 0.2 * sv)
        prof_f = np.sqrt(sv) * (0.8 + 0.2 * su)
        shade = np.where(warp_up, prof_w * warp_gain[ju], prof_f * weft_gain[jv])
        tint = np.array([0.50, 0.46, 0.38]) + rng.uniform(-0.02, 0.02, 3)
        warp_rgb = tint * np.array([0.92, 0.95, 1.05])
        weft_rgb = tint * np.array([1.06, 1.04, 0.98])
        colour = np.where(warp_up[..., None], warp_rgb, weft_rgb)
        grain = 0.05 * _noise(rng, cv, 0.7 * s)
        clouds = 0.04 * _noise(rng, cv, 14.0 * s)
        light = 0.5 + 0.62 * shade + grain + clouds
        self._img = np.clip(colour * light[..., None], 0.0, 1.0)

    def base(self) -> np.ndarray:
        return self._img


# --------------------------------------------------------------------------------------------
# tiles: square ceramic tiles with grout lines
# --------------------------------------------------------------------------------------------


class _Tiles(_Scene):
    style = _Style(
        scratch_sign=-1.0,
        scratch_contrast=(0.4, 0.5),
        color_shift=(0.2, 0.3),
        hole_rgb=(0.22, 0.20, 0.17),
        stain_rgb=(0.0, 0.0, 0.0),
    )

    def __init__(self, cv: _Canvas, rng: np.random.Generator) -> None:
        super().__init__(cv, rng)
        s, n = cv.s, cv.size
        self.pitch = n / 6.0
        grout = max(1.5, 3.0 * s)
        self.half = (self.pitch - grout) / 2.0
        self.ox, self.oy = 0.3 * self.pitch + rng.uniform(-2.0, 2.0, 2) * s  # grid phase jitter
        cells = int(np.ceil(n / self.pitch)) + 3
        base = np.array([0.80, 0.77, 0.70]) + rng.uniform(-0.02, 0.02, 3)
        self.tile_rgb = base * (1 + 0.035 * rng.standard_normal((cells, cells, 1)))
        self.tile_rgb = self.tile_rgb + 0.012 * rng.standard_normal((cells, cells, 3))
        self.surface = 1.0 + 0.035 * _noise(rng, cv, 0.6 * s) + 0.025 * _noise(rng, cv, 5.0 * s)
        grout_rgb = np.array([0.42, 0.41, 0.39])
        self.grout = grout_rgb * (1.0 + 0.10 * _noise(rng, cv, 0.8 * s))[..., None]
        gx, gy = rng.standard_normal(2)
        self.light = 1.0 + 0.04 * (gx * (cv.xx / n - 0.5) + gy * (cv.yy / n - 0.5))
        cx, cy = (cv.xx - self.ox) / self.pitch, (cv.yy - self.oy) / self.pitch
        self.ci, self.cj = np.floor(cx).astype(int), np.floor(cy).astype(int)
        lx, ly = (cx - self.ci - 0.5) * self.pitch, (cy - self.cj - 0.5) * self.pitch
        self.alpha = _soft_box(lx, ly, self.half, self.half)
        self.bevel = self._bevel(lx, ly)
        self.rgb = self.tile_rgb[self.cj + 1, self.ci + 1]
        self._img = self._paint(self.alpha, self.rgb, self.bevel)

    def _bevel(self, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
        """Tiles darken towards their edges: the bevel that makes them look 3-D."""
        edge = self.half - np.maximum(np.abs(lx), np.abs(ly))
        return 0.86 + 0.14 * np.clip(edge / (2.5 * self.cv.s), 0.0, 1.0)

    def _paint(self, alpha: np.ndarray, rgb: np.ndarray, bevel: np.ndarray) -> np.ndarray:
        tile = rgb * (bevel * self.surface)[..., None]
        return np.clip(_over(self.grout, alpha, tile) * self.light[..., None], 0.0, 1.0)

    def base(self) -> np.ndarray:
        return self._img

    def compose(
        self, defect: str | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if defect != "misaligned":
            return super().compose(defect, rng)
        cv = self.cv
        # a tile well inside the image, so that its shifted footprint stays inside too
        first_i = int(np.ceil((2.0 - self.ox) / self.pitch))
        last_i = int(np.floor((cv.size - 2.0 - self.ox) / self.pitch)) - 1
        first_j = int(np.ceil((2.0 - self.oy) / self.pitch))
        last_j = int(np.floor((cv.size - 2.0 - self.oy) / self.pitch)) - 1
        ki = int(rng.integers(first_i, last_i + 1))
        kj = int(rng.integers(first_j, last_j + 1))
        shift = rng.uniform(3.5, 4.5) * cv.s
        direction = rng.uniform(0.0, 2 * np.pi)
        turn = np.deg2rad(rng.uniform(6.0, 9.0) * rng.choice([-1.0, 1.0]))
        cx = self.ox + (ki + 0.5) * self.pitch + shift * np.cos(direction)
        cy = self.oy + (kj + 0.5) * self.pitch + shift * np.sin(direction)
        dx, dy = cv.xx - cx, cv.yy - cy
        lx = dx * np.cos(turn) + dy * np.sin(turn)
        ly = -dx * np.sin(turn) + dy * np.cos(turn)
        alpha_k = _soft_box(lx, ly, self.half, self.half)
        home = (self.ci == ki) & (self.cj == kj)
        alpha_old = np.where(home, self.alpha, 0.0)
        others = self.alpha - alpha_old
        mine = alpha_k > others
        alpha = np.maximum(others, alpha_k)
        rgb = np.where(mine[..., None], self.tile_rgb[kj + 1, ki + 1], self.rgb)
        bevel = np.where(mine, self._bevel(lx, ly), self.bevel)
        mask = (alpha_old >= _MASK_LEVEL) | (alpha_k >= _MASK_LEVEL)
        return self._paint(alpha, rgb, bevel), mask


# --------------------------------------------------------------------------------------------
# board: a circuit board with components in fixed places
# --------------------------------------------------------------------------------------------

# (kind, x, y) in units of the image size: the fixed layout of every board
_LAYOUT: tuple[tuple[str, float, float], ...] = (
    ("chip", 0.36, 0.40),
    ("capacitor", 0.72, 0.33),
    ("resistor", 0.64, 0.72),
    ("screw", 0.12, 0.12),
    ("screw", 0.88, 0.88),
)

# traces of the printed circuit: axis-aligned segments (x0, y0, x1, y1) in units of the size
_TRACES: tuple[tuple[float, float, float, float], ...] = (
    (0.29, 0.30, 0.29, 0.16),
    (0.29, 0.16, 0.60, 0.16),
    (0.60, 0.16, 0.60, 0.33),
    (0.40, 0.30, 0.40, 0.22),
    (0.40, 0.22, 0.50, 0.22),
    (0.50, 0.22, 0.50, 0.33),
    (0.50, 0.33, 0.66, 0.33),
    (0.33, 0.50, 0.33, 0.72),
    (0.33, 0.72, 0.57, 0.72),
    (0.44, 0.50, 0.44, 0.62),
    (0.44, 0.62, 0.80, 0.62),
    (0.80, 0.62, 0.80, 0.40),
    (0.71, 0.72, 0.92, 0.72),
    (0.92, 0.72, 0.92, 0.20),
    (0.08, 0.40, 0.26, 0.40),
    (0.08, 0.40, 0.08, 0.85),
    (0.08, 0.85, 0.30, 0.85),
)

# half width and height of each part's footprint at 128 px, a little generous
_HALF_EXTENT: dict[str, tuple[float, float]] = {
    "chip": (10.5, 8.5),
    "capacitor": (7.5, 7.5),
    "resistor": (10.0, 3.5),
    "screw": (5.5, 5.5),
}

_SILVER = (0.74, 0.74, 0.71)
_GOLD = (0.72, 0.60, 0.30)
_SILK = (0.86, 0.86, 0.80)
_TRACE = (0.18, 0.47, 0.27)

_Layers = list[tuple[np.ndarray, tuple[float, float, float]]]


@functools.lru_cache(maxsize=4)
def _board_print(size: int) -> tuple[np.ndarray, np.ndarray]:
    """What is printed on every board: traces, silkscreen outlines, pads, mounting rings.

    It stays when a part is missing, and it is the same on every image, so it is drawn once per
    size as a transmittance T and a premultiplied colour P: ``board = bare * T + P``.
    """
    cv = _Canvas.make(size)
    s, n = cv.s, size
    trans = np.ones((n, n))
    paint = np.zeros((n, n, 3))

    def add(alpha: np.ndarray, rgb: tuple[float, float, float]) -> None:
        nonlocal trans, paint
        a = np.clip(alpha, 0.0, 1.0)
        trans = trans * (1.0 - a)
        paint = paint * (1.0 - a[..., None]) + a[..., None] * np.asarray(rgb)

    hw = 1.0 * s
    for x0, y0, x1, y1 in _TRACES:
        xa, xb = sorted((x0 * n, x1 * n))
        ya, yb = sorted((y0 * n, y1 * n))
        lx, ly = cv.xx - (xa + xb) / 2, cv.yy - (ya + yb) / 2
        add(_soft_box(lx, ly, (xb - xa) / 2 + hw, (yb - ya) / 2 + hw), _TRACE)
    for kind, x, y in _LAYOUT:
        cx, cy = x * n, y * n
        dx, dy = cv.xx - cx, cv.yy - cy
        if kind == "chip":
            add(_soft_box(dx, dy, 11.5 * s, 9.5 * s) - _soft_box(dx, dy, 10.5 * s, 8.5 * s), _SILK)
            for k in range(4):
                pad = _soft_box(dx - (k - 1.5) * 4.5 * s, dy, 1.3 * s, 7.0 * s)
                add(pad * (np.abs(dy) > 4.0 * s), _GOLD)
        elif kind == "capacitor":
            add(_soft_disk(dx, dy, 0, 0, 9.0 * s) - _soft_disk(dx, dy, 0, 0, 8.0 * s), _SILK)
            for px in (-3.5, 3.5):
                add(_soft_disk(dx, dy, px * s, 0, 1.8 * s), _GOLD)
        elif kind == "resistor":
            for px in (-7.5, 7.5):
                add(_soft_box(dx - px * s, dy, 1.8 * s, 1.6 * s), _GOLD)
        elif kind == "screw":
            add(_soft_disk(dx, dy, 0, 0, 6.8 * s), _GOLD)
            add(_soft_disk(dx, dy, 0, 0, 4.6 * s), (0.05, 0.06, 0.05))
    trans.flags.writeable = False
    paint.flags.writeable = False
    return trans, paint


def _part(kind: str, cv: _Canvas, cx: float, cy: float) -> tuple[tuple[slice, slice], _Layers]:
    """Layers (alpha, rgb) of one part centred at (cx, cy), bottom first, in a window ``box``.

    Only the window around the part is computed: the parts are small and this is the hot loop.
    """
    s = cv.s
    hx, hy = (h * s for h in _HALF_EXTENT[kind])
    x0, x1 = max(int(cx - hx) - 2, 0), min(int(np.ceil(cx + hx)) + 3, cv.size)
    y0, y1 = max(int(cy - hy) - 2, 0), min(int(np.ceil(cy + hy)) + 3, cv.size)
    box = (slice(y0, y1), slice(x0, x1))
    dx, dy = cv.xx[box] - cx, cv.yy[box] - cy
    if kind == "chip":
        layers: _Layers = []
        for k in range(4):  # four pins above and below the body
            px = (k - 1.5) * 4.5 * s
            layers.append((_soft_box(dx - px, dy, 1.1 * s, 7.5 * s), _SILVER))
        layers.append((_soft_box(dx, dy, 9.0 * s, 5.0 * s), (0.09, 0.09, 0.10)))
        layers.append((_soft_disk(dx, dy, -6.0 * s, -2.2 * s, 1.2 * s), (0.30, 0.30, 0.31)))
        return box, layers
    if kind == "capacitor":
        ring = _soft_disk(dx, dy, 0, 0, 7.0 * s)
        top = _soft_disk(dx, dy, 0, 0, 5.0 * s)
        stripe = ring * (dx < -3.5 * s)  # the polarity stripe on the sleeve
        cross = np.maximum(_soft_box(dx, dy, 3.5 * s, 0.5 * s), _soft_box(dx, dy, 0.5 * s, 3.5 * s))
        return box, [
            (ring, (0.14, 0.20, 0.52)),
            (stripe, (0.62, 0.64, 0.70)),
            (top, (0.70, 0.71, 0.74)),
            (top * cross, (0.42, 0.43, 0.46)),
        ]
    if kind == "resistor":
        body = _soft_box(dx, dy, 6.0 * s, 2.6 * s)
        bands = [(-3.0, (0.70, 0.12, 0.10)), (-0.5, (0.45, 0.15, 0.55)), (2.5, (0.40, 0.25, 0.10))]
        layers = [(_soft_box(dx, dy, 9.0 * s, 0.8 * s), _SILVER), (body, (0.80, 0.68, 0.50))]
        layers += [(body * _soft_box(dx - bx * s, dy, 0.7 * s, 9.0), c) for bx, c in bands]
        return box, layers
    if kind == "screw":
        head = _soft_disk(dx, dy, 0, 0, 5.0 * s)
        shine = np.clip(1.0 - np.hypot(dx + 1.5 * s, dy + 1.5 * s) / (5.0 * s), 0.0, 1.0)
        cross = np.maximum(_soft_box(dx, dy, 3.5 * s, 0.6 * s), _soft_box(dx, dy, 0.6 * s, 3.5 * s))
        return box, [
            (head, (0.58, 0.58, 0.56)),
            (head * shine * 0.6, (0.90, 0.90, 0.88)),
            (head * cross, (0.20, 0.20, 0.20)),
        ]
    raise AssertionError(kind)


class _Board(_Scene):
    style = _Style(
        scratch_sign=1.0,
        scratch_contrast=(0.3, 0.4),
        color_shift=(0.3, 0.4),
        hole_rgb=(0.05, 0.08, 0.05),
        stain_rgb=(0.42, 0.40, 0.32),
    )

    def __init__(self, cv: _Canvas, rng: np.random.Generator) -> None:
        super().__init__(cv, rng)
        s, n = cv.s, cv.size
        green = np.array([0.13, 0.36, 0.21]) + rng.uniform(-0.015, 0.015, 3)
        texture = 1.0 + 0.05 * _noise(rng, cv, 0.6 * s) + 0.05 * _noise(rng, cv, 10.0 * s)
        trans, paint = _board_print(n)
        self.board = np.clip((green * texture[..., None]) * trans[..., None] + paint, 0.0, 1.0)
        self.places: list[tuple[str, float, float]] = []
        for kind, x, y in _LAYOUT:
            jx, jy = rng.uniform(-1.0, 1.0, 2) * s  # parts sit within a pixel of their place
            self.places.append((kind, x * n + jx, y * n + jy))
        self._base: np.ndarray | None = None

    def _draw(self, places: list[tuple[str, float, float]]) -> np.ndarray:
        img = self.board.copy()
        for kind, cx, cy in places:
            box, layers = _part(kind, self.cv, cx, cy)
            window = img[box]  # a view: the parts are painted in place
            for alpha, rgb in layers:
                window += alpha[..., None] * (np.asarray(rgb) - window)
        return img

    def base(self) -> np.ndarray:
        if self._base is None:
            self._base = self._draw(self.places)
        return self._base

    def _foot(self, place: tuple[str, float, float]) -> np.ndarray:
        """Full-size alpha of the area a part covers."""
        box, layers = _part(place[0], self.cv, place[1], place[2])
        full = np.zeros((self.cv.size, self.cv.size))
        full[box] = np.maximum.reduce([a for a, _ in layers])
        return full

    def _free_spot(
        self, rng: np.random.Generator, kind: str, taken: np.ndarray
    ) -> tuple[str, float, float]:
        """A place for ``kind`` that stays inside the image and clear of every other part."""
        n, s = self.cv.size, self.cv.s
        hx, hy = (h * s + 1.0 for h in _HALF_EXTENT[kind])
        for _ in range(500):
            cx, cy = rng.uniform(hx + 2.0, n - hx - 2.0), rng.uniform(hy + 2.0, n - hy - 2.0)
            x0, x1 = int(cx - hx), int(np.ceil(cx + hx)) + 1
            y0, y1 = int(cy - hy), int(np.ceil(cy + hy)) + 1
            if not taken[y0:y1, x0:x1].any():  # the box holds the whole footprint
                return kind, float(cx), float(cy)
        raise AssertionError("no free place on the board")  # the layout leaves plenty

    def compose(
        self, defect: str | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if defect not in ("missing", "misplaced", "extra"):
            return super().compose(defect, rng)
        feet = [self._foot(place) for place in self.places]
        occupied = np.maximum.reduce(feet) > 0
        # keep new parts off the parts, their pads and a margin around them
        taken = ndimage.binary_dilation(occupied, iterations=max(3, round(4 * self.cv.s)))
        places = list(self.places)
        if defect == "extra":
            kind = str(rng.choice(["capacitor", "resistor", "screw"]))
            spot = self._free_spot(rng, kind, taken)
            places.append(spot)
            mask = self._foot(spot) >= _MASK_LEVEL
            return self._draw(places), mask
        k = int(rng.integers(len(places)))
        mask = feet[k] >= _MASK_LEVEL
        if defect == "missing":
            del places[k]
            return self._draw(places), mask
        spot = self._free_spot(rng, places[k][0], taken)
        places[k] = spot
        mask |= self._foot(spot) >= _MASK_LEVEL
        return self._draw(places), mask


_SCENES: dict[str, type[_Scene]] = {"fabric": _Fabric, "tiles": _Tiles, "board": _Board}
