"""Image and mask reading: every mode, depth and format becomes RGB uint8 / bool, and every
broken file becomes a DataError naming the file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from fod.data.images import as_size, load_image, load_mask, resize_image, resize_mask
from fod.errors import DataError

FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "tif": "TIFF"}
LOSSLESS = ["png", "bmp", "tif"]


def _rgb_pattern(h: int = 6, w: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _save(im: Image.Image, path: Path, **kw: object) -> Path:
    im.save(path, **kw)
    return path


# ----------------------------------------------------------------------------- modes and formats


@pytest.mark.parametrize("ext", LOSSLESS)
def test_rgb_round_trip_lossless(tmp_path: Path, ext: str) -> None:
    a = _rgb_pattern()
    p = _save(Image.fromarray(a), tmp_path / f"x.{ext}")
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("ext", ["jpg", "jpeg", "JPG"])
def test_rgb_jpeg_flat_colour(tmp_path: Path, ext: str) -> None:
    p = _save(Image.new("RGB", (16, 16), (200, 40, 90)), tmp_path / f"x.{ext}", quality=95)
    out = load_image(p)
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - [200, 40, 90]).max() <= 3


@pytest.mark.parametrize("ext", list(FORMATS))
def test_grayscale_becomes_three_equal_channels(tmp_path: Path, ext: str) -> None:
    g = np.tile(np.array([0, 60, 128, 255], dtype=np.uint8), (8, 2))
    p = _save(Image.fromarray(g), tmp_path / f"g.{ext}")
    out = load_image(p)
    assert out.shape == (8, 8, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    tol = 6 if ext == "jpg" else 0
    assert np.abs(out[..., 0].astype(int) - g).max() <= tol


@pytest.mark.parametrize("ext", LOSSLESS)
def test_one_bit_is_0_or_255(tmp_path: Path, ext: str) -> None:
    im = Image.new("1", (4, 3), 0)
    im.putpixel((1, 2), 1)
    p = _save(im, tmp_path / f"b.{ext}")
    assert Image.open(p).mode == "1"
    out = load_image(p)
    assert out[2, 1].tolist() == [255, 255, 255]
    assert out.sum() == 255 * 3


@pytest.mark.parametrize("ext", LOSSLESS)
def test_palette_gives_palette_colours(tmp_path: Path, ext: str) -> None:
    im = Image.new("P", (3, 2), 0)
    im.putpalette([0, 0, 0, 10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 9))
    im.putpixel((1, 0), 1)
    im.putpixel((2, 1), 2)
    p = _save(im, tmp_path / f"p.{ext}")
    assert Image.open(p).mode == "P"
    out = load_image(p)
    assert out[0, 1].tolist() == [10, 20, 30]
    assert out[1, 2].tolist() == [200, 100, 50]
    assert out[0, 0].tolist() == [0, 0, 0]


def test_palette_transparency_composited_on_black(tmp_path: Path) -> None:
    im = Image.new("P", (2, 1), 0)
    im.putpalette([255, 255, 255, 10, 20, 30] + [0] * (256 * 3 - 6))
    im.putpixel((1, 0), 1)
    p = _save(im, tmp_path / "pt.png", transparency=0)
    out = load_image(p)
    assert out[0, 0].tolist() == [0, 0, 0]  # transparent white -> black
    assert out[0, 1].tolist() == [10, 20, 30]


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_rgba_composited_on_black(tmp_path: Path, ext: str) -> None:
    a = np.array([[[100, 200, 50, 128], [100, 200, 50, 255], [90, 90, 90, 0]]], dtype=np.uint8)
    p = _save(Image.fromarray(a, "RGBA"), tmp_path / f"rgba.{ext}")
    out = load_image(p)
    assert out.tolist() == [[[50, 100, 25], [100, 200, 50], [0, 0, 0]]]


def test_la_composited_on_black(tmp_path: Path) -> None:
    p = _save(Image.new("LA", (2, 2), (200, 128)), tmp_path / "la.png")
    assert load_image(p)[0, 0].tolist() == [100, 100, 100]


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_scaled_by_257(tmp_path: Path, ext: str) -> None:
    a = np.array([[0, 65535, 257], [1000, 32768, 128]], dtype=np.uint16)
    p = _save(Image.fromarray(a), tmp_path / f"d16.{ext}")
    assert Image.open(p).mode.startswith("I;16")
    out = load_image(p)
    assert out[..., 0].tolist() == [[0, 255, 1], [4, 128, 0]]
    assert (out[..., 0] == out[..., 2]).all()


def test_16_bit_big_endian_tiff(tmp_path: Path) -> None:
    p = _save(Image.new("I;16B", (2, 2), 65535), tmp_path / "be.tif")
    assert Image.open(p).mode == "I;16B"
    assert load_image(p)[0, 0].tolist() == [255, 255, 255]


def test_32_bit_int_tiff_holding_16_bit_values(tmp_path: Path) -> None:
    a = np.array([[0, 65535], [257, 514]], dtype=np.int32)
    p = _save(Image.fromarray(a), tmp_path / "i32.tif")
    assert Image.open(p).mode == "I"
    assert load_image(p)[..., 0].tolist() == [[0, 255], [1, 2]]


def test_32_bit_int_tiff_wide_range_min_max(tmp_path: Path) -> None:
    a = np.array([[-100, 100_000], [-100, 49_950]], dtype=np.int32)
    p = _save(Image.fromarray(a), tmp_path / "i32w.tif")
    assert load_image(p)[..., 0].tolist() == [[0, 255], [0, 128]]


def test_float_tiff_unit_range_and_min_max(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    p = _save(Image.fromarray(unit), tmp_path / "f.tif")
    assert Image.open(p).mode == "F"
    assert load_image(p)[..., 0].tolist() == [[0, 128], [255, 64]]
    wide = np.array([[-2.0, 2.0], [0.0, np.nan]], dtype=np.float32)
    q = _save(Image.fromarray(wide), tmp_path / "fw.tif")
    assert load_image(q)[..., 0].tolist() == [[0, 255], [128, 0]]


@pytest.mark.parametrize("ext", ["jpg", "tif"])
def test_cmyk(tmp_path: Path, ext: str) -> None:
    p = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / f"c.{ext}")
    assert Image.open(p).mode == "CMYK"
    out = load_image(p)
    assert np.abs(out[4, 4].astype(int) - [255, 0, 0]).max() <= 3


def test_output_is_writable_contiguous_copy(tmp_path: Path) -> None:
    p = _save(Image.fromarray(_rgb_pattern()), tmp_path / "x.png")
    out = load_image(p)
    assert out.flags.writeable and out.flags.c_contiguous
    out[0, 0] = 0  # must not raise


# ----------------------------------------------------------------------------- broken files


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.png: image file not found"):
        load_image(tmp_path / "nope.png")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a folder, not an image file"):
        load_image(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: the image file is empty \(0 bytes\)"):
        load_image(p)


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("hello, not pixels")
    with pytest.raises(DataError) as err:
        load_image(p)
    msg = str(err.value)
    assert str(p) in msg and "not a readable image" in msg and "Convert it to PNG" in msg


@pytest.mark.parametrize("ext", list(FORMATS))
def test_truncated_file_is_detected(tmp_path: Path, ext: str) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    full = _save(Image.fromarray(_rgb_pattern(64, 64)), tmp_path / f"full.{ext}")
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataError) as err:
        load_image(cut)
    msg = str(err.value)
    assert str(cut) in msg
    assert "is truncated" in msg and "Re-copy or re-export it" in msg
    with pytest.raises(DataError, match="truncated"):
        load_mask(cut)


def test_zero_size_png(tmp_path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
    p = tmp_path / "zero.png"
    p.write_bytes(png + chunk(b"IEND", b""))
    with pytest.raises(DataError, match=r"zero\.png: the image has zero size"):
        load_image(p)


# ----------------------------------------------------------------------------- masks


def test_mask_any_nonzero_is_defective(tmp_path: Path) -> None:
    a = np.zeros((4, 5), dtype=np.uint8)
    a[1, 2] = 1
    a[3, 4] = 255
    m = load_mask(_save(Image.fromarray(a), tmp_path / "m.png"))
    assert m.dtype == bool and m.shape == (4, 5)
    assert sorted(zip(*np.nonzero(m), strict=True)) == [(1, 2), (3, 4)]


def test_mask_16_bit_value_one(tmp_path: Path) -> None:
    a = np.zeros((3, 3), dtype=np.uint16)
    a[0, 0] = 1  # would round to 0 if scaled to 8 bit first
    m = load_mask(_save(Image.fromarray(a), tmp_path / "m16.png"))
    assert m.sum() == 1 and m[0, 0]


@pytest.mark.parametrize("ext", LOSSLESS)
def test_mask_rgb_any_channel(tmp_path: Path, ext: str) -> None:
    a = np.zeros((3, 4, 3), dtype=np.uint8)
    a[0, 1, 2] = 7  # blue only
    a[2, 3] = (255, 0, 0)
    m = load_mask(_save(Image.fromarray(a), tmp_path / f"m.{ext}"))
    assert m.tolist() == [
        [False, True, False, False],
        [False, False, False, False],
        [False, False, False, True],
    ]


def test_mask_palette_one_bit_and_rgba(tmp_path: Path) -> None:
    p = Image.new("P", (2, 1), 0)
    p.putpalette([0, 0, 0, 255, 255, 255] + [0] * (256 * 3 - 6))
    p.putpixel((1, 0), 1)
    assert load_mask(_save(p, tmp_path / "p.png")).tolist() == [[False, True]]
    b = Image.new("1", (2, 1), 0)
    b.putpixel((0, 0), 1)
    assert load_mask(_save(b, tmp_path / "b.bmp")).tolist() == [[True, False]]
    rgba = np.array([[[255, 255, 255, 0], [255, 255, 255, 255]]], dtype=np.uint8)
    m = load_mask(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    assert m.tolist() == [[False, True]]  # fully transparent is not a defect


def test_mask_jpeg_noise_is_thresholded(tmp_path: Path) -> None:
    a = np.zeros((32, 32), dtype=np.uint8)
    a[5:21, 5:21] = 255  # not aligned to the 8x8 JPEG blocks, so the edges ring
    p = _save(Image.fromarray(a), tmp_path / "m.jpg", quality=50)
    assert (np.array(Image.open(p)) > 0).sum() > 300  # JPEG noise spreads the square
    assert load_mask(p).sum() == 256


def test_mask_size_mismatch_names_file_sizes_and_fix(tmp_path: Path) -> None:
    p = _save(Image.new("L", (40, 30), 255), tmp_path / "crack_mask.png")
    assert load_mask(p, size=(30, 40)).all()
    with pytest.raises(DataError) as err:
        load_mask(p, size=(20, 30), image_path=tmp_path / "img.png")
    msg = str(err.value)
    assert str(p) in msg and str(tmp_path / "img.png") in msg
    assert "the mask is 40x30 pixels (width x height)" in msg
    assert "is 30x20" in msg and "resize=True" in msg


def test_mask_resize_flag_uses_nearest(tmp_path: Path) -> None:
    a = np.zeros((4, 4), dtype=np.uint8)
    a[:2, :2] = 255
    p = _save(Image.fromarray(a), tmp_path / "m.png")
    m = load_mask(p, size=(8, 8), resize=True)
    assert m.shape == (8, 8) and m.dtype == bool
    assert m[:4, :4].all() and m.sum() == 16


def test_mask_missing_file_says_mask(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"x_mask\.png: mask file not found"):
        load_mask(tmp_path / "x_mask.png")


# ----------------------------------------------------------------------------- resizing


def test_resize_image_bilinear_antialiased() -> None:
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    img = np.repeat(checker[..., None], 3, axis=2)
    out = resize_image(img, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    # without antialiasing a bilinear shrink samples the checkerboard and stays near 0 or 255
    assert np.abs(out.astype(int) - 127.5).max() <= 3
    assert resize_image(img, (16, 32)).shape == (16, 32, 3)
    assert resize_image(checker, (5, 7)).shape == (5, 7)


def test_resize_image_same_size_is_copy() -> None:
    img = _rgb_pattern()
    out = resize_image(img, (6, 5))
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_resize_mask_nearest_stays_binary() -> None:
    m = np.array([[True, False], [False, True]])
    up = resize_mask(m, 4)
    assert up.dtype == bool
    assert up.astype(int).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert resize_mask(up, (2, 2)).tolist() == m.tolist()


@pytest.mark.parametrize("bad", [0, -3, (4,), (4, 0), 2.5, True, "8"])
def test_bad_sizes_raise(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        as_size(bad)  # type: ignore[arg-type]


def test_resize_image_rejects_float() -> None:
    with pytest.raises(ValueError, match="uint8"):
        resize_image(np.zeros((4, 4, 3), dtype=np.float32), 2)
