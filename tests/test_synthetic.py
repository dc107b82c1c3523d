"""The synthetic data generator: layout, determinism, exact masks, and the right difficulty."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from fod.data.synthetic import CATEGORIES, DEFECTS, generate, image_rng, render
from fod.errors import DataError

LOCAL_DEFECTS = {"scratch", "hole", "contamination", "color"}
LOGICAL_DEFECTS = {"missing", "misplaced", "extra", "misaligned"}
CASES = [(c, d) for c, spec in CATEGORIES.items() for d in spec.defects]


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _auroc(negatives: list[float], positives: list[float]) -> float:
    """Probability that a positive outranks a negative (ties count half)."""
    neg, pos = np.asarray(negatives)[:, None], np.asarray(positives)[None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def _dynamic_range(img: np.ndarray) -> float:
    lo, hi = np.percentile(img.astype(np.float64).mean(axis=-1), [2, 98])
    return float(hi - lo)


def test_catalogue_is_consistent() -> None:
    assert set(CATEGORIES) == {"fabric", "tiles", "board"}
    for spec in CATEGORIES.values():
        assert 3 <= len(spec.defects) <= 5
        assert set(spec.defects) <= set(DEFECTS)
        assert spec.description
    assert set(CATEGORIES["board"].defects) & {"missing", "misplaced", "extra"}
    assert "misaligned" in CATEGORIES["tiles"].defects


def test_layout_counts_and_masks(tmp_path: Path) -> None:
    out = generate(tmp_path / "data", image_size=64, n_train=3, n_test_good=2, n_test_per_defect=2)
    assert out == tmp_path / "data"
    assert sorted(p.name for p in out.iterdir()) == sorted(CATEGORIES)
    for name, spec in CATEGORIES.items():
        root = out / name
        assert sorted(p.name for p in (root / "train").iterdir()) == ["good"]
        assert sorted(p.name for p in (root / "train" / "good").iterdir()) == [
            "000.png",
            "001.png",
            "002.png",
        ]
        assert sorted(p.name for p in (root / "test").iterdir()) == sorted(["good", *spec.defects])
        assert len(list((root / "test" / "good").iterdir())) == 2
        # good images have no masks; every defective image has exactly one, same size
        assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(spec.defects)
        for image_path in (root / "train" / "good").iterdir():
            with Image.open(image_path) as im:
                assert (im.mode, im.size) == ("RGB", (64, 64))
        for defect in spec.defects:
            images = sorted((root / "test" / defect).iterdir())
            masks = sorted((root / "ground_truth" / defect).iterdir())
            assert [p.stem + "_mask.png" for p in images] == [p.name for p in masks]
            assert len(images) == 2
            for image_path, mask_path in zip(images, masks, strict=True):
                with Image.open(image_path) as im, Image.open(mask_path) as mk:
                    assert (im.mode, mk.mode) == ("RGB", "L")
                    assert im.size == mk.size == (64, 64)
                    values = np.asarray(mk)
                assert set(np.unique(values)) == {0, 255}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    kwargs = {"image_size": 64, "n_train": 2, "n_test_good": 2, "n_test_per_defect": 1}
    first = _hashes(generate(tmp_path / "a", **kwargs))
    again = _hashes(generate(tmp_path / "b", **kwargs))
    other = _hashes(generate(tmp_path / "c", seed=1, **kwargs))
    assert first == again
    assert first.keys() == other.keys()
    images = [k for k in first if not k.endswith("_mask.png")]
    assert all(first[k] != other[k] for k in images)


def test_test_split_does_not_depend_on_train_size(tmp_path: Path) -> None:
    kwargs = {"categories": ["tiles"], "image_size": 64, "n_test_good": 2, "n_test_per_defect": 1}
    small = _hashes(generate(tmp_path / "a", n_train=1, **kwargs))
    large = _hashes(generate(tmp_path / "b", n_train=4, **kwargs))
    assert {k: v for k, v in small.items() if "/train/" not in k} == {
        k: v for k, v in large.items() if "/train/" not in k
    }
    assert small["tiles/train/good/000.png"] == large["tiles/train/good/000.png"]


def test_rerun_into_same_folder_leaves_exactly_the_new_data_set(tmp_path: Path) -> None:
    kwargs = {"categories": ("fabric",), "image_size": 64, "n_test_good": 1}
    generate(tmp_path, n_train=4, n_test_per_defect=3, **kwargs)
    notes = tmp_path / "fabric" / "train" / "good" / "notes.txt"
    notes.write_text("not ours")
    generate(tmp_path, n_train=2, n_test_per_defect=1, **kwargs)
    assert sorted(p.name for p in notes.parent.iterdir()) == ["000.png", "001.png", "notes.txt"]
    assert [p.name for p in (tmp_path / "fabric" / "ground_truth" / "hole").iterdir()] == [
        "000_mask.png"
    ]


@pytest.mark.parametrize(("category", "defect"), CASES)
def test_change_is_confined_to_the_mask_and_real(category: str, defect: str) -> None:
    """Same generator state with and without the defect: they differ only at the mask."""
    for index in range(4):
        good, empty = render(category, image_rng(7, category, "probe", index))
        bad, mask = render(category, image_rng(7, category, "probe", index), defect=defect)
        assert not empty.any()
        assert mask.shape == good.shape[:2] and mask.dtype == bool
        diff = np.abs(good.astype(np.int16) - bad.astype(np.int16)).max(axis=-1)
        near = ndimage.binary_dilation(mask, iterations=2)  # anti-aliased edge
        assert diff[~near].max(initial=0) <= 1, "change outside the mask"
        # the defect is there: a real change over the mask, not a few stray pixels
        assert diff[mask].mean() >= 10
        # 0.3 % to 4 % of the image: from a thin scratch to a part moved elsewhere
        assert 0.003 <= mask.mean() <= 0.04
        if defect in LOCAL_DEFECTS:  # modest contrast, not a glaring blot
            assert diff[mask].mean() <= 0.6 * _dynamic_range(good)


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_trivial_global_statistics_do_not_separate(category: str) -> None:
    """Mean brightness and global contrast must not find the defects (either direction)."""
    spec = CATEGORIES[category]
    good = [render(category, image_rng(3, category, "test/good", i))[0] for i in range(30)]
    bad = [
        render(category, image_rng(3, category, f"test/{d}", i), defect=d)[0]
        for d in spec.defects
        for i in range(6)
    ]
    for statistic in (np.mean, np.std):
        auc = _auroc([float(statistic(x)) for x in good], [float(statistic(x)) for x in bad])
        assert max(auc, 1 - auc) < 0.9, (category, statistic.__name__, auc)


@pytest.mark.parametrize("size", [64, 96])
def test_other_image_sizes(tmp_path: Path, size: int) -> None:
    for name, spec in CATEGORIES.items():
        img, mask = render(name, image_rng(0, name, "size", size), size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert not mask.any()
        for defect in spec.defects:
            img, mask = render(name, image_rng(0, name, "size", size), size, defect)
            assert img.shape == (size, size, 3) and mask.shape == (size, size)
            assert mask.any()
    out = generate(
        tmp_path, ("board",), image_size=size, n_train=1, n_test_good=1, n_test_per_defect=1
    )
    with Image.open(out / "board" / "ground_truth" / "missing" / "000_mask.png") as mk:
        assert mk.size == (size, size)


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown synthetic category"):
        generate(tmp_path, categories=("carpet",))
    with pytest.raises(DataError, match="image_size"):
        generate(tmp_path, image_size=16)
    with pytest.raises(DataError, match="n_train"):
        generate(tmp_path, n_train=0)
    with pytest.raises(DataError, match="not generated"):
        render("fabric", image_rng(0, "fabric", "x", 0), defect="missing")
    assert not any(tmp_path.iterdir())
