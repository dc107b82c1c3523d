"""Folder layouts (MVTec AD, BTAD, MVTec 3D-AD), their errors, the torch dataset, and the real
MTD data set in MVTec layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fod.data import (
    Category,
    ImageDataset,
    Sample,
    detect_layout,
    find_categories,
    load_batch,
    load_category,
    load_image,
    load_mask,
)
from fod.errors import DataError


def _img(path: Path, size: tuple[int, int] = (12, 10), value: int = 120) -> Path:
    """Write a small RGB image (size is width, height as PIL takes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value // 2, 255 - value)).save(path)
    return path


def _mask(
    path: Path, size: tuple[int, int] = (12, 10), box: tuple[int, ...] = (2, 2, 6, 5)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = 255
    Image.fromarray(a).save(path)
    return path


def make_mvtec(root: Path, n_train: int = 3, types: dict[str, int] | None = None) -> Path:
    types = {"good": 2, "crack": 2, "scratch": 1} if types is None else types
    for i in range(n_train):
        _img(root / "train" / "good" / f"{i:03d}.png")
    for t, n in types.items():
        for i in range(n):
            _img(root / "test" / t / f"{i:03d}.png")
            if t != "good":
                _mask(root / "ground_truth" / t / f"{i:03d}_mask.png")
    return root


def make_btad(root: Path) -> Path:
    for i in range(3):
        _img(root / "train" / "ok" / f"{i:04d}.bmp")
    for i in range(2):
        _img(root / "test" / "ok" / f"{i:04d}.bmp")
        _img(root / "test" / "ko" / f"{i:04d}.bmp")
    _mask(root / "ground_truth" / "ko" / "0000.png")
    _mask(root / "ground_truth" / "ko" / "0001.bmp")  # BTAD mixes .png and .bmp masks
    return root


def make_mvtec3d(root: Path) -> Path:
    for i in range(3):
        _img(root / "train" / "good" / "rgb" / f"{i:03d}.png")
        (root / "train" / "good" / "xyz").mkdir(parents=True, exist_ok=True)
        (root / "train" / "good" / "xyz" / f"{i:03d}.tiff").write_bytes(b"not read")
    _img(root / "validation" / "good" / "rgb" / "000.png")
    for t in ("good", "hole"):
        for i in range(2):
            _img(root / "test" / t / "rgb" / f"{i:03d}.png")
            _mask(
                root / "test" / t / "gt" / f"{i:03d}.png",
                box=(0, 0, 0, 0) if t == "good" else (1, 1, 4, 4),
            )
    return root


def _error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    return str(excinfo.value)


# ----------------------------------------------------------------------------- layouts


def test_mvtec_layout(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "bottle")
    assert detect_layout(root) == "mvtec"
    cat = load_category(root)
    assert isinstance(cat, Category)
    assert (cat.name, cat.layout, cat.root) == ("bottle", "mvtec", root)
    assert [s.image.name for s in cat.train] == ["000.png", "001.png", "002.png"]
    assert all(s.label == 0 and s.defect_type == "good" and s.mask is None for s in cat.train)
    assert [(s.defect_type, s.image.name, s.label) for s in cat.test] == [
        ("good", "000.png", 0),
        ("good", "001.png", 0),
        ("crack", "000.png", 1),
        ("crack", "001.png", 1),
        ("scratch", "000.png", 1),
    ]
    assert cat.test[2].mask == root / "ground_truth" / "crack" / "000_mask.png"
    assert cat.test[0].mask is None
    assert cat.defect_types == ["crack", "scratch"]
    assert cat.good_type == "good"
    assert (cat.num_test_good, cat.num_test_anomalous) == (2, 3)
    assert cat.counts() == {"good": 2, "crack": 2, "scratch": 1}
    assert repr(cat) == (
        f"Category(name='bottle', layout='mvtec', root='{root}', train=3, test=5 "
        "(2 good, 3 anomalous in 2 defect types))"
    )


def test_btad_layout_png_and_bmp_masks(tmp_path: Path) -> None:
    root = make_btad(tmp_path / "01")
    assert detect_layout(root) == "btad"
    cat = load_category(root)
    assert cat.layout == "btad" and cat.good_type == "ok"
    assert len(cat.train) == 3 and all(s.defect_type == "ok" for s in cat.train)
    assert [(s.defect_type, s.label) for s in cat.test] == [("ok", 0)] * 2 + [("ko", 1)] * 2
    assert [s.mask.name for s in cat.test if s.mask is not None] == ["0000.png", "0001.bmp"]
    assert cat.defect_types == ["ko"]


def test_mvtec3d_layout_rgb_only(tmp_path: Path) -> None:
    root = make_mvtec3d(tmp_path / "bagel")
    assert detect_layout(root) == "mvtec3d"
    cat = load_category(root)
    assert cat.layout == "mvtec3d"
    assert [s.image.relative_to(root).as_posix() for s in cat.train] == [
        "train/good/rgb/000.png",
        "train/good/rgb/001.png",
        "train/good/rgb/002.png",
    ]
    assert [s.defect_type for s in cat.test] == ["good", "good", "hole", "hole"]
    assert [s.mask for s in cat.test[:2]] == [None, None]
    assert cat.test[2].mask == root / "test" / "hole" / "gt" / "000.png"
    with_val = load_category(root, include_validation=True)
    assert len(with_val.train) == 4
    assert with_val.train[-1].image == root / "validation" / "good" / "rgb" / "000.png"


def test_mvtec3d_type_without_rgb_folder(tmp_path: Path) -> None:
    root = make_mvtec3d(tmp_path / "bagel")
    (root / "test" / "crack").mkdir()
    _img(root / "test" / "crack" / "000.png")
    with pytest.raises(DataError) as err:
        load_category(root)
    assert f"{root / 'test' / 'crack'}: no rgb/ folder" in _error(err)


def test_extensions_hidden_files_and_order(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c", n_train=0, types={"good": 1})
    good = root / "train" / "good"
    good.mkdir(parents=True, exist_ok=True)
    for name in ("b.PNG", "a.jpeg", "c.TIF", "d.tiff", "e.JPG", "f.bmp"):
        _img(good / name)
    (good / "notes.txt").write_text("ignored: not an image extension")
    _img(good / ".hidden.png")
    _img(good / "._resource_fork.png")
    (good / ".DS_Store").write_bytes(b"\0")
    (good / "sub").mkdir()
    cat = load_category(root)
    assert [s.image.name for s in cat.train] == [
        "a.jpeg",
        "b.PNG",
        "c.TIF",
        "d.tiff",
        "e.JPG",
        "f.bmp",
    ]
    assert cat.defect_types == []  # a test split without anomalies is allowed at load time
    assert load_category(root).train == cat.train  # deterministic


def test_layout_override(tmp_path: Path) -> None:
    root = make_btad(tmp_path / "02")
    assert load_category(root, layout="btad").layout == "btad"
    with pytest.raises(DataError) as err:
        load_category(root, layout="mvtec")
    msg = _error(err)
    assert f"{root / 'train' / 'good'}: folder not found (layout 'mvtec'" in msg
    assert "looks like layout 'btad': pass layout='btad'" in msg
    with pytest.raises(
        DataError, match=r"unknown data set layout 'visa'\. Use one of mvtec, btad, mvtec3d"
    ):
        load_category(root, layout="visa")
    with pytest.raises(DataError, match="unknown data set layout"):
        find_categories(root, layout="visa")


def test_mvtec_override_on_mvtec3d_hints_rgb(tmp_path: Path) -> None:
    root = make_mvtec3d(tmp_path / "bagel")
    with pytest.raises(DataError) as err:
        load_category(root, layout="mvtec")
    msg = _error(err)
    assert f"{root / 'train' / 'good'}: training image folder holds no images" in msg
    assert "pass layout='mvtec3d'" in msg


# ----------------------------------------------------------------------------- benchmarks


def test_benchmark_root_with_two_categories(tmp_path: Path) -> None:
    make_mvtec(tmp_path / "mvtec" / "zipper")
    make_mvtec(tmp_path / "mvtec" / "bottle", types={"good": 1, "broken": 1})
    (tmp_path / "mvtec" / "license.txt").write_text("files next to categories are fine")
    (tmp_path / "mvtec" / ".cache").mkdir()
    cats = find_categories(tmp_path / "mvtec")
    assert [c.name for c in cats] == ["bottle", "zipper"]
    assert [len(c.test) for c in cats] == [2, 5]
    assert detect_layout(tmp_path / "mvtec") == "mvtec"
    assert [c.name for c in find_categories(tmp_path / "mvtec" / "zipper")] == ["zipper"]
    with pytest.raises(DataError) as err:
        load_category(tmp_path / "mvtec")
    assert "is a benchmark folder with categories (bottle, zipper)" in _error(err)
    assert "find_categories()" in _error(err)


def test_benchmark_override_and_mixed_layouts(tmp_path: Path) -> None:
    make_btad(tmp_path / "btad" / "01")
    make_btad(tmp_path / "btad" / "03")
    assert [c.layout for c in find_categories(tmp_path / "btad", layout="btad")] == ["btad", "btad"]
    make_mvtec(tmp_path / "btad" / "99")
    with pytest.raises(DataError, match="categories use different layouts"):
        detect_layout(tmp_path / "btad")


def test_benchmark_with_stray_folder(tmp_path: Path) -> None:
    make_mvtec(tmp_path / "b" / "bottle")
    (tmp_path / "b" / "results").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        find_categories(tmp_path / "b")
    msg = _error(err)
    assert f"{tmp_path / 'b' / 'results'}: this sub-folder of the benchmark folder" in msg
    assert "is not a category" in msg and "Move it out" in msg


# ----------------------------------------------------------------------------- errors


def test_missing_root_and_file_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: data folder not found"):
        load_category(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"nowhere: data folder not found"):
        find_categories(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"nowhere: data folder not found"):
        detect_layout(tmp_path / "nowhere")
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a data folder"):
        load_category(f)


def test_no_recognizable_layout(tmp_path: Path) -> None:
    (tmp_path / "x" / "images").mkdir(parents=True)
    (tmp_path / "x" / "labels").mkdir()
    for call in (load_category, find_categories, detect_layout):
        with pytest.raises(DataError) as err:
            call(tmp_path / "x")
        msg = _error(err)
        assert f"{tmp_path / 'x'}: no supported data set layout found" in msg
        assert "found images/, labels/" in msg
        assert "mvtec:   train/good/*, test/<type>/*, ground_truth/<type>/<stem>_mask.png" in msg
        assert "btad:    train/ok/*, test/ok/*, test/ko/*" in msg
        assert "mvtec3d: train/good/rgb/*, test/<type>/rgb/*, test/<type>/gt/<stem>.png" in msg


def test_empty_train_folder(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c", n_train=0)
    (root / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        load_category(root)
    msg = _error(err)
    assert f"{root / 'train' / 'good'}: training image folder holds no images" in msg
    assert "Put the images there" in msg


def test_train_folder_with_unsupported_files(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c", n_train=0)
    (root / "train" / "good").mkdir(parents=True)
    (root / "train" / "good" / "a.webp").write_bytes(b"x")
    (root / "train" / "good" / "b.WEBP").write_bytes(b"x")
    with pytest.raises(DataError) as err:
        load_category(root)
    assert "holds 2 files but no images with a supported extension" in _error(err)
    assert "found extensions: .webp" in _error(err)


def test_images_directly_in_train(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c", n_train=0)
    _img(root / "train" / "001.png")
    with pytest.raises(
        DataError, match=r"lie directly in train/ \(1 images\). Move them into train/good/"
    ):
        load_category(root)


def test_test_folder_without_images_is_an_error(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c", types={})
    (root / "test").mkdir()
    with pytest.raises(DataError) as err:
        load_category(root)
    assert f"{root / 'test'}: the test folder holds no images" in _error(err)
    assert load_category(root, require_test=False).test == []
    (root / "test" / "crack").mkdir()
    with pytest.raises(DataError, match=r"crack: test image \('crack'\) folder holds no images"):
        load_category(root)


def test_missing_test_folder(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c", types={})
    with pytest.raises(DataError, match=r"no test/ folder.*require_test=False"):
        load_category(root)
    assert len(load_category(root, require_test=False).train) == 3


def test_images_directly_in_test(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c")
    _img(root / "test" / "loose.png")
    with pytest.raises(
        DataError, match=r"1 images lie directly in test/.*Move them into test/good/"
    ):
        load_category(root)


def test_missing_mask_names_image_and_expected_path(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c")
    (root / "ground_truth" / "crack" / "001_mask.png").unlink()
    (root / "ground_truth" / "scratch" / "000_mask.png").unlink()
    with pytest.raises(DataError) as err:
        load_category(root)
    msg = _error(err)
    image = root / "test" / "crack" / "001.png"
    assert msg.startswith(f"{image}: anomalous test image without a mask; expected ")
    assert f"expected {root / 'ground_truth' / 'crack' / '001_mask.png'} (1 more" in msg
    assert "(1 more anomalous images have no mask too)" in msg
    cat = load_category(root, require_masks=False)
    assert [s.mask is None for s in cat.test if s.label == 1] == [False, True, True]


def test_mvtec3d_missing_mask(tmp_path: Path) -> None:
    root = make_mvtec3d(tmp_path / "bagel")
    (root / "test" / "hole" / "gt" / "001.png").unlink()
    (root / "test" / "good" / "gt" / "000.png").unlink()  # good images need no mask
    with pytest.raises(DataError) as err:
        load_category(root)
    gt = root / "test" / "hole" / "gt"
    assert _error(err).startswith(
        f"{root / 'test' / 'hole' / 'rgb' / '001.png'}: anomalous test image without a mask; "
        f"expected {gt / '001.png'}. Add the mask"
    )


def test_btad_missing_mask_lists_png_and_bmp(tmp_path: Path) -> None:
    root = make_btad(tmp_path / "01")
    (root / "ground_truth" / "ko" / "0001.bmp").unlink()
    with pytest.raises(DataError) as err:
        load_category(root)
    gt = root / "ground_truth" / "ko"
    assert f"expected {gt / '0001.png'} or {gt / '0001.bmp'}" in _error(err)


def test_misnamed_ground_truth_folder(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c")
    (root / "ground_truth").rename(root / "GroundTruth")
    with pytest.raises(DataError, match="there is 'GroundTruth': rename it to 'ground_truth'"):
        load_category(root)


def test_mask_found_case_insensitively(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c", types={"crack": 1})
    (root / "ground_truth" / "crack" / "000_mask.png").rename(
        root / "ground_truth" / "crack" / "000_MASK.PNG"
    )
    cat = load_category(root)
    assert cat.test[0].mask == root / "ground_truth" / "crack" / "000_MASK.PNG"


@pytest.mark.parametrize(
    ("folder", "expected"),
    [("Good", "good"), ("normal", "good"), ("GOOD", "good"), ("OK", "ok"), ("defect_free", "good")],
)
def test_misnamed_train_good_folder(tmp_path: Path, folder: str, expected: str) -> None:
    root = make_mvtec(tmp_path / "c", n_train=0)
    _img(root / "train" / folder / "000.png")
    with pytest.raises(DataError) as err:
        load_category(root)
    msg = _error(err)
    assert msg.startswith(f"{root / 'train' / folder}: the folder of defect-free training images")
    assert f"not '{folder}'. Rename the folder to '{expected}'." in msg


def test_misnamed_good_folder_with_explicit_layout(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c", n_train=0)
    _img(root / "train" / "Good" / "000.png")
    with pytest.raises(DataError, match=r"must be named 'good', not 'Good'\. Rename the folder"):
        load_category(root, layout="mvtec")


def test_misnamed_test_good_folder(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c", types={"Good": 1, "crack": 1})
    with pytest.raises(DataError) as err:
        load_category(root)
    msg = _error(err)
    assert msg.startswith(f"{root / 'test' / 'Good'}: in layout 'mvtec' the folder of defect-free")
    assert "Rename the folder to 'good'" in msg


@pytest.mark.parametrize(
    ("folder", "expected"), [("Train", "train"), ("training", "train"), ("Test", "test")]
)
def test_misnamed_split_folder(tmp_path: Path, folder: str, expected: str) -> None:
    root = make_mvtec(tmp_path / "c")
    (root / expected).rename(root / folder)
    with pytest.raises(DataError, match=f"must be named '{expected}', not '{folder}'"):
        load_category(root)


def test_sample_validation() -> None:
    s = Sample("a.png", 1, "crack", "m.png")  # type: ignore[arg-type]
    assert s.image == Path("a.png") and s.mask == Path("m.png")
    with pytest.raises(ValueError, match="label must be 0"):
        Sample(Path("a.png"), 2, "crack", None)
    with pytest.raises(AttributeError):
        s.label = 0  # type: ignore[misc]


# ----------------------------------------------------------------------------- torch dataset


def test_dataset_items(tmp_path: Path) -> None:
    cat = load_category(make_mvtec(tmp_path / "c"))
    ds = ImageDataset(cat.test, 8)
    assert len(ds) == 5
    good, bad = ds[0], ds[2]
    assert good["image"].shape == (3, 8, 8) and good["image"].dtype == torch.float32
    assert float(good["image"].min()) >= 0.0 and float(good["image"].max()) <= 1.0
    # the flat colour (120, 60, 135) survives the resize exactly
    assert torch.allclose(good["image"][:, 4, 4], torch.tensor([120, 60, 135]) / 255.0)
    assert good["mask"].shape == (1, 8, 8) and good["mask"].dtype == torch.float32
    assert float(good["mask"].sum()) == 0.0 and good["label"] == 0 and good["has_mask"]
    assert bad["label"] == 1 and bad["defect_type"] == "crack"
    assert bad["path"] == str(cat.test[2].image)
    assert set(torch.unique(bad["mask"]).tolist()) == {0.0, 1.0}
    # nearest neighbour: output pixel i samples source pixel floor((i + 0.5) * src / dst)
    box = np.zeros((10, 12), dtype=np.float32)
    box[2:5, 2:6] = 1.0
    rows = np.floor((np.arange(8) + 0.5) * 10 / 8).astype(int)
    cols = np.floor((np.arange(8) + 0.5) * 12 / 8).astype(int)
    expected = box[np.ix_(rows, cols)]
    assert expected.sum() == 6  # rows 2-3, columns 1-3
    assert bad["mask"][0].numpy().tolist() == expected.tolist()


def test_dataset_rectangular_size_and_loader(tmp_path: Path) -> None:
    cat = load_category(make_mvtec(tmp_path / "c"))
    batch = next(iter(DataLoader(ImageDataset(cat.test, (6, 10)), batch_size=5)))
    assert batch["image"].shape == (5, 3, 6, 10)
    assert batch["mask"].shape == (5, 1, 6, 10)
    assert batch["label"].tolist() == [0, 0, 1, 1, 1]
    assert batch["defect_type"] == ["good", "good", "crack", "crack", "scratch"]


def test_dataset_mask_of_other_size_names_both_files(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c")
    mask = _mask(root / "ground_truth" / "crack" / "000_mask.png", size=(24, 20))
    cat = load_category(root)
    ds = ImageDataset(cat.test, 8)
    with pytest.raises(DataError) as err:
        ds[2]
    msg = _error(err)
    assert str(mask) in msg and str(root / "test" / "crack" / "000.png") in msg
    assert "the mask is 24x20 pixels (width x height)" in msg and "is 12x10" in msg


def test_dataset_without_mask_flags_it(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "c", types={"crack": 1})
    (root / "ground_truth" / "crack" / "000_mask.png").unlink()
    item = ImageDataset(load_category(root, require_masks=False).test, 4)[0]
    assert item["label"] == 1 and not item["has_mask"] and float(item["mask"].sum()) == 0.0


def test_load_batch(tmp_path: Path) -> None:
    a = _img(tmp_path / "a.png", value=0)
    b = tmp_path / "b.tif"
    Image.new("I;16", (5, 7), 65535).save(b)
    x = load_batch([a, str(b)], 16)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x[1], torch.ones(3, 16, 16))
    assert load_batch(a, (4, 6)).shape == (1, 3, 4, 6)
    with pytest.raises(DataError, match="no image files given"):
        load_batch([], 16)
    with pytest.raises(DataError, match=r"missing\.png: image file not found"):
        load_batch([tmp_path / "missing.png"], 16)


# ----------------------------------------------------------------------------- real data: MTD


@pytest.fixture(scope="module")
def mtd_category(mtd: Path) -> Category:
    return load_category(mtd)


def test_mtd_layout_and_counts(mtd_category: Category) -> None:
    assert detect_layout(mtd_category.root) == "mvtec"
    assert mtd_category.layout == "mvtec" and mtd_category.name == "mtd"
    assert len(mtd_category.train) == 761 and len(mtd_category.test) == 583
    assert mtd_category.counts() == {
        "good": 191,
        "blowhole": 115,
        "break": 85,
        "crack": 57,
        "fray": 32,
        "uneven": 103,
    }
    assert mtd_category.defect_types == ["blowhole", "break", "crack", "fray", "uneven"]
    assert all(s.image.suffix == ".jpg" for s in mtd_category.train + mtd_category.test)


def test_mtd_every_anomalous_sample_has_a_mask(mtd_category: Category) -> None:
    bad = [s for s in mtd_category.test if s.label == 1]
    assert len(bad) == 392
    for s in bad:
        assert s.mask is not None and s.mask.is_file()
        assert (
            s.mask
            == mtd_category.root / "ground_truth" / s.defect_type / f"{s.image.stem}_mask.png"
        )
    assert all(s.mask is None for s in mtd_category.test if s.label == 0)


def test_mtd_images_and_masks_load_with_matching_sizes(mtd_category: Category) -> None:
    bad = [s for s in mtd_category.test if s.label == 1]
    for s in (bad[0], bad[200], bad[-1]):
        img = load_image(s.image)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert (img[..., 0] == img[..., 1]).all()  # grayscale JPEGs
        assert s.mask is not None
        mask = load_mask(s.mask, size=img.shape[:2])
        assert mask.shape == img.shape[:2] and 0 < mask.sum() < mask.size
    item = ImageDataset(bad[:1], 64)[0]
    assert item["image"].shape == (3, 64, 64) and float(item["mask"].sum()) > 0
