"""Robust image and mask reading: any format, mode and bit depth PIL knows -> RGB uint8 / bool.

Data sets in the wild mix grayscale JPEGs, palette PNGs, 16-bit TIFFs and RGBA exports. Every
reader here turns them into one representation, so the rest of the package never branches on
file details, and every failure becomes a :class:`~fod.errors.DataError` that names the file,
says what is wrong and how to fix it.

Conventions:

- Sizes are ``(height, width)`` like numpy shapes; messages print ``WIDTHxHEIGHT`` and say so.
- Pixels are taken as stored: EXIF orientation is *not* applied, because masks are drawn on the
  stored pixel grid and rotating only the image would misalign them.
- Transparent images (RGBA, LA, PA, palette with transparency) are composited on black: the
  colour under fully transparent pixels is undefined and differs between tools, so compositing
  gives the same picture whatever program wrote the file.
- Multi-frame files (multi-page TIFF) use their first frame.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fod.errors import DataError, option

__all__ = ["as_size", "load_image", "load_mask", "resize_image", "resize_mask"]

# Errors PIL's decoders raise for damaged data (truncated streams, bad chunks, bad headers).
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (bits per sample as stored, signed) of a file; None where the header does not say.
_Depth = tuple[int | None, bool]


def _size_text(h: int, w: int) -> str:
    return f"{w}x{h}"


def as_size(size: int | tuple[int, int], what: str = "size") -> tuple[int, int]:
    """Accept ``S`` or ``(h, w)``; sizes are user settings, so check them loudly."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
    ):
        h, w = int(size[0]), int(size[1])
    else:
        raise ValueError(f"{what} must be an int or a (height, width) pair of ints, got {size!r}")
    if h <= 0 or w <= 0:
        raise ValueError(f"{what} must be positive, got {size!r}")
    return h, w


def _sniff_zero_size(path: Path) -> bool:
    """True if the header declares a zero width or height (PIL refuses such files outright,
    so without this the user would only hear 'not an image')."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    if head.startswith(_PNG_SIGNATURE) and len(head) >= 24 and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return w == 0 or h == 0
    if head.startswith(b"BM") and len(head) >= 26:
        header_size = struct.unpack("<I", head[14:18])[0]
        if header_size >= 40:
            w, h = struct.unpack("<ii", head[18:26])
            return w == 0 or h == 0
    if head.startswith(b"GIF8") and len(head) >= 10:
        w, h = struct.unpack("<HH", head[6:10])
        return w == 0 or h == 0
    return False


@contextmanager
def _open(path: str | Path, what: str) -> Iterator[tuple[Path, Image.Image, _Depth]]:
    """Open and fully decode ``path``; yield it with the bit depth its header declares.

    ``Image.open`` only reads the header, so ``load()`` is forced here: truncated or corrupt
    pixel data must fail at this point, with the file's name, not later inside a resize.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise DataError(
            f"{path}: the {what} file is a broken symbolic link (to {os.readlink(path)}). "
            "Restore its target, or remove the link."
        )
    if not path.exists():
        raise DataError(
            f"{path}: {what} file not found. Check the path (relative paths start at "
            f"{Path.cwd()}), or restore the file."
        )
    if path.is_dir():
        article = "an" if what[0] in "aeiou" else "a"
        raise DataError(
            f"{path}: is a folder, not {article} {what} file. Give the path of the {what} file."
        )
    try:
        size_bytes = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} file ({e}). Check its permissions.") from e
    if size_bytes == 0:
        raise DataError(
            f"{path}: the {what} file is empty (0 bytes). Re-copy or re-export it; "
            "an interrupted download or copy leaves such files."
        )
    try:
        im = Image.open(path)
    except UnidentifiedImageError as e:
        if _sniff_zero_size(path):
            raise DataError(
                f"{path}: the {what} has zero size (its header gives a width or height of 0). "
                "Re-export the file, or remove it from the data set."
            ) from e
        raise DataError(
            f"{path}: not a readable image (PIL cannot identify the format of this "
            f"{size_bytes}-byte file). Convert it to PNG, JPEG, BMP or TIFF, or remove it."
        ) from e
    except PermissionError as e:
        raise DataError(f"{path}: cannot read the {what} file ({e}). Check its permissions.") from e
    except Image.DecompressionBombError as e:
        raise DataError(
            f"{path}: the {what} is too large to decode safely ({e}). Downscale it first."
        ) from e
    except _DECODE_ERRORS as e:
        raise DataError(
            f"{path}: the {what} file is damaged ({e}). Re-copy or re-export it."
        ) from e
    with im:
        depth = _declared_bits(im)
        try:
            im.load()
        except _DECODE_ERRORS as e:
            reason = str(e) or type(e).__name__
            kind = "truncated" if "truncated" in reason.lower() else "damaged"
            raise DataError(
                f"{path}: the {what} file is {kind} ({reason}); PIL could not decode all of its "
                "pixels. Re-copy or re-export it (an interrupted download or copy is the usual "
                "cause), or remove it from the data set."
            ) from e
        if im.width == 0 or im.height == 0:
            raise DataError(
                f"{path}: the {what} has zero size ({im.width}x{im.height}, width x height). "
                "Re-export the file, or remove it from the data set."
            )
        yield path, im, depth


def _declared_bits(im: Image.Image) -> _Depth:
    """Bits per sample and signedness as the file stores them (read before ``load()`` clears
    the tile list). Needed for mode ``I`` (PIL's 32-bit ints), which holds 16-bit, signed and
    32-bit data alike."""
    tags = getattr(im, "tag_v2", None)
    if tags is not None and 258 in tags:
        bps, fmt = tags[258], tags.get(339, 1)
        bps = bps[0] if isinstance(bps, (tuple, list)) else bps
        fmt = fmt[0] if isinstance(fmt, (tuple, list)) else fmt
        try:
            return int(bps), int(fmt) == 2
        except (TypeError, ValueError):
            return None, False
    for tile in im.tile or ():
        args = tile[3]
        rawmode = args[0] if isinstance(args, tuple) else args
        if isinstance(rawmode, str):
            match = re.search(r"(\d+)(S?)", rawmode)
            if match:
                return int(match.group(1)), match.group(2) == "S"
    return None, False


def _gray16_to_8(a: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit by the full 16-bit range (65535 / 255 = 257), rounded."""
    return np.clip(np.rint(a.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def _int_to_8(a: np.ndarray, bits: int | None, signed: bool) -> np.ndarray:
    """Mode ``I``: scale by the declared bit depth; signed data is shifted to start at 0.

    32-bit data rarely uses its full range, so data deeper than 16 bits is scaled as 16-bit
    when its values fit in [0, 65535] and min-max scaled otherwise.
    """
    x = a.astype(np.float64)
    if x.size == 0:
        return np.zeros(x.shape, dtype=np.uint8)
    lo, hi = float(x.min()), float(x.max())
    if bits is None:
        bits = 8 if lo >= 0 and hi <= 255 else 16
    if bits > 16 or lo < -(2.0 ** (bits - 1)) or hi > 2.0**bits - 1:
        if lo >= 0 and hi <= 65535:
            bits, signed = 16, False
        else:
            return _minmax_to_8(x)
    if signed or lo < 0:
        x = x + 2.0 ** (bits - 1)
    scale = (2.0**bits - 1.0) / 255.0
    return np.clip(np.rint(x / scale), 0, 255).astype(np.uint8)


def _minmax_to_8(x: np.ndarray) -> np.ndarray:
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(x.shape, dtype=np.uint8)
    lo, hi = float(x[finite].min()), float(x[finite].max())
    x = np.where(finite, x, lo)
    if hi == lo:
        return np.full(x.shape, int(np.clip(np.rint(lo), 0, 255)), dtype=np.uint8)
    return np.clip(np.rint((x - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _float_to_8(a: np.ndarray) -> np.ndarray:
    """Mode ``F``: values within [0, 1] are intensities (x 255); anything else is min-max
    scaled, since float images have no fixed range. NaN and infinities become the minimum."""
    x = a.astype(np.float64)
    finite = np.isfinite(x)
    if finite.any():
        lo, hi = float(x[finite].min()), float(x[finite].max())
        if lo >= 0.0 and hi <= 1.0:
            x = np.where(finite, x, 0.0)
            return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return _minmax_to_8(x)


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0
    return np.clip(np.rint(rgba[..., :3].astype(np.float64) * alpha), 0, 255).astype(np.uint8)


def _to_rgb8(im: Image.Image, depth: _Depth, path: Path) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    gray: np.ndarray | None = None
    if mode == "L":
        gray = np.array(im, dtype=np.uint8)
    elif mode == "1":
        gray = np.array(im, dtype=np.uint8) * np.uint8(255)
    elif mode.startswith("I;16"):
        gray = _gray16_to_8(np.array(im))
    elif mode == "I":
        gray = _int_to_8(np.array(im), *depth)
    elif mode == "F":
        gray = _float_to_8(np.array(im))
    if gray is not None:
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        return _composite_on_black(np.array(im.convert("RGBA"), dtype=np.uint8))
    try:
        return np.array(im.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as e:
        raise DataError(
            f"{path}: image mode {mode!r} cannot be converted to RGB ({e}). "
            "Convert the file to an 8-bit RGB or grayscale PNG."
        ) from e


def load_image(path: str | Path) -> np.ndarray:
    """Read any image file as an ``(H, W, 3)`` uint8 RGB array.

    Grayscale, 1-bit, palette, CMYK and YCbCr become RGB; 16-bit data is divided by 257;
    32-bit integer and float data are scaled as described in :func:`_int_to_8` and
    :func:`_float_to_8`; alpha is composited on black. Raises :class:`DataError` for a missing,
    unreadable, truncated or zero-size file.
    """
    with _open(path, "image") as (p, im, depth):
        return _to_rgb8(im, depth, p)


def _mask_from_pil(im: Image.Image, lossy: bool) -> np.ndarray:
    """Defective = any non-zero value in any colour channel, at the file's own bit depth (so a
    16-bit mask with value 1 counts). With alpha, transparent pixels are never defective.

    Lossy files (JPEG) carry compression noise around edges, so they are thresholded at half
    range instead of at zero; masks should be stored losslessly (PNG, BMP, TIFF).
    """
    mode = im.mode
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        a = np.array(im)
        if mode == "F":
            a = np.nan_to_num(a.astype(np.float64), nan=0.0)
        if lossy and mode == "L":
            return a >= 128
        return a != 0
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        rgba = np.array(im.convert("RGBA"), dtype=np.uint8)
        colour, alpha = rgba[..., :3], rgba[..., 3]
        return (colour >= 128 if lossy else colour != 0).any(axis=2) & (alpha != 0)
    rgb = np.array(im if mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    return (rgb >= 128 if lossy else rgb != 0).any(axis=2)


def load_mask(
    path: str | Path,
    size: tuple[int, int] | None = None,
    *,
    resize: bool = False,
    image_path: str | Path | None = None,
) -> np.ndarray:
    """Read a defect mask as an ``(H, W)`` bool array: any non-zero pixel is defective.

    ``size=(h, w)`` is the size of the mask's image. A mask of another size raises
    :class:`DataError` (a silently stretched mask would misplace every defect), unless
    ``resize=True``, which resizes it with nearest neighbour. ``image_path`` only makes the
    message name the image too.
    """
    with _open(path, "mask") as (p, im, _depth):
        mask = _mask_from_pil(im, lossy=im.format in ("JPEG", "MPO"))
    if size is None:
        return mask
    h, w = as_size(size)
    if mask.shape != (h, w):
        if resize:
            return resize_mask(mask, (h, w))
        of_image = f" of {image_path}" if image_path is not None else ""
        raise DataError(
            f"{p}: the mask is {_size_text(*mask.shape)} pixels (width x height) but the image"
            f"{of_image} is {_size_text(h, w)}. A mask must have its image's size: re-export the "
            f"mask at {_size_text(h, w)}"
            f"{option(', or pass resize=True to resize it with nearest neighbour', '')}."
        )
    return mask


def resize_image(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an ``(H, W, 3)`` or ``(H, W)`` uint8 image to ``size`` (``S`` or ``(h, w)``).

    Bilinear with antialiasing (PIL widens the filter when shrinking), so downscaled defects
    keep their energy instead of aliasing away.
    """
    h, w = as_size(size)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(
            f"resize_image expects an (H, W, 3) or (H, W) uint8 array, got {img.dtype} {img.shape}"
        )
    if img.shape[:2] == (h, w):
        return img.copy()
    pil = Image.fromarray(np.ascontiguousarray(img))
    return np.array(pil.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a bool ``(H, W)`` mask with nearest neighbour: masks stay strictly binary."""
    h, w = as_size(size)
    if mask.ndim != 2:
        raise ValueError(f"resize_mask expects an (H, W) array, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    if mask.shape == (h, w):
        return mask.copy()
    pil = Image.fromarray(mask.astype(np.uint8) * np.uint8(255))
    return np.array(pil.resize((w, h), Image.Resampling.NEAREST)) > 0
