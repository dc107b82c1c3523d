"""Heat-map overlays: image | ground truth | heat map (or image | heat map) in one RGB array.

Panels are drawn with numpy, PIL and matplotlib colormaps only (no pyplot figure), so they are
fast, thread-safe and leave a user's pyplot state alone. Pass the same ``vmin`` / ``vmax`` for
all images of a category (e.g. quantiles of the normal images' scores) to make their colours
comparable; by default each map is stretched to its own min..max.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from fod.io import atomic_write

MASK_COLOR = (255, 0, 0)
BACKGROUND = 255


@dataclass(frozen=True)
class PanelGeometry:
    """Where the panels sit in the array returned by :func:`overlay_panel`."""

    top: int  # height of the text band above the panels (0 without text)
    lefts: tuple[int, ...]  # first column of each panel: image, [ground truth,] heat map
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)


def text_height(image_height: int) -> int:
    """Height of the text band: readable at 256 px, not dominating at 1024 px."""
    return _font_size(image_height) + 8


def _font_size(image_height: int) -> int:
    return int(np.clip(image_height // 16, 10, 28))


def panel_geometry(
    height: int, width: int, *, has_text: bool, margin: int = 4, panels: int = 3
) -> PanelGeometry:
    """Layout of a panel for an ``height x width`` image: ``panels`` pictures (3 with the
    ground truth, 2 without) ``margin`` apart."""
    top = text_height(height) if has_text else 0
    lefts = tuple(i * (width + margin) for i in range(panels))
    return PanelGeometry(top, lefts, top + height, panels * width + (panels - 1) * margin)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font only
        return ImageFont.load_default()


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 (uint8, or float in [0, 1]) as HxWx3 uint8."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be HxW or HxWx(1|3|4), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            arr = np.round(np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def _resize(arr: np.ndarray, height: int, width: int, nearest: bool) -> np.ndarray:
    if arr.shape == (height, width):
        return arr
    if nearest:
        img = Image.fromarray(arr.astype(np.uint8) * 255)
        return np.asarray(img.resize((width, height), Image.Resampling.NEAREST)) > 0
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))  # mode "F"
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64)


def normalize(
    heatmap: np.ndarray, vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """Map values to [0, 1] with ``vmin -> 0`` and ``vmax -> 1`` (clipped; NaN -> 0)."""
    h = np.asarray(heatmap, dtype=np.float64)
    finite = h[np.isfinite(h)]
    lo = float(vmin) if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if not hi > lo:
        return np.zeros_like(h)
    out = (h - lo) / (hi - lo)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def colorize(
    heatmap: np.ndarray, vmin: float | None = None, vmax: float | None = None, cmap: str = "jet"
) -> np.ndarray:
    """Heat map as an HxWx3 uint8 colour image through a matplotlib colormap."""
    rgba = matplotlib.colormaps[cmap](normalize(heatmap, vmin, vmax))
    return np.round(rgba[..., :3] * 255.0).astype(np.uint8)


def mask_outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Pixels of the mask that touch the outside (the image border counts as outside)."""
    inner = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~inner


def _blend(base: np.ndarray, top: np.ndarray | tuple[int, int, int], alpha: float) -> np.ndarray:
    mixed = (1.0 - alpha) * base.astype(np.float64) + alpha * np.asarray(top, dtype=np.float64)
    return np.round(mixed).astype(np.uint8)


def _centered_text(panel: np.ndarray, text: str, size: int) -> np.ndarray:
    img = Image.fromarray(panel)
    draw = ImageDraw.Draw(img)
    font = _font(size)
    box = draw.textbbox((0, 0), text, font=font)
    x = (panel.shape[1] - (box[2] - box[0])) // 2
    y = (panel.shape[0] - (box[3] - box[1])) // 2
    draw.rectangle((x - 4, y - 4, x + box[2] - box[0] + 4, y + box[3] - box[1] + 4), fill=(0, 0, 0))
    draw.text((x - box[0], y - box[1]), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def ground_truth_panel(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Mask filled translucent red with a solid outline; dimmed with a note when there is none."""
    h, w = image.shape[:2]
    if mask is None or not mask.any():
        note = "no mask" if mask is None else "no defect"
        return _centered_text(_blend(image, (0, 0, 0), 0.5), note, _font_size(h))
    panel = image.copy()
    panel[mask] = _blend(image[mask], MASK_COLOR, 0.35)
    panel[mask_outline(mask, max(1, min(h, w) // 256))] = MASK_COLOR
    return panel


def overlay_panel(
    image: np.ndarray,
    mask: np.ndarray | None,
    heatmap: np.ndarray,
    score: float | None = None,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    margin: int = 4,
    ground_truth: bool = True,
) -> np.ndarray:
    """Image | ground truth | heat map over the image, as one RGB uint8 array; with
    ``ground_truth=False`` image | heat map (for images without labels; ``mask`` is ignored).

    With a ``title`` or ``score`` a text band of :func:`text_height` rows is added on top; the
    exact layout is :func:`panel_geometry`. A heat map (or mask) of another size than the image
    is resized to it (bilinear; nearest for the mask).
    """
    img = as_rgb_uint8(image)
    h, w = img.shape[:2]
    hm = np.asarray(heatmap, dtype=np.float64)
    if hm.ndim != 2:
        raise ValueError(f"heatmap must be HxW, got shape {hm.shape}")
    hm = _resize(hm, h, w, nearest=False)
    m = None
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 3 and m.shape[2] == 1:
            m = m[..., 0]
        if m.ndim != 2:
            raise ValueError(f"mask must be HxW, got shape {m.shape}")
        m = _resize(m != 0, h, w, nearest=True)

    parts = [f"{title}"] if title else []
    if score is not None:
        parts.append(f"score {score:.3f}")
    heat = _blend(img, colorize(hm, vmin, vmax, cmap), alpha)
    pictures = (img, ground_truth_panel(img, m), heat) if ground_truth else (img, heat)
    geo = panel_geometry(h, w, has_text=bool(parts), margin=margin, panels=len(pictures))
    out = np.full(geo.shape, BACKGROUND, dtype=np.uint8)
    for left, panel in zip(geo.lefts, pictures, strict=True):
        out[geo.top : geo.top + h, left : left + w] = panel
    if parts:
        band = Image.fromarray(out[: geo.top])
        ImageDraw.Draw(band).text(
            (4, 3), "   ".join(parts), fill=(0, 0, 0), font=_font(_font_size(h))
        )
        out[: geo.top] = np.asarray(band)
    return out


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Write an HxW or HxWx(3|4) uint8 array as PNG, atomically."""
    arr = np.asarray(array)
    if (
        arr.dtype != np.uint8
        or arr.ndim not in (2, 3)
        or (arr.ndim == 3 and arr.shape[2] not in (3, 4))
    ):
        raise ValueError(f"save_png needs HxW or HxWx(3|4) uint8, got {arr.shape} {arr.dtype}")
    img = Image.fromarray(np.ascontiguousarray(arr))
    return atomic_write(path, lambda p: img.save(p, format="PNG"))
