"""Training-free baselines: each scorer against a loop over positions in numpy, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GENERATED, GENERATED_DEFECTS, TINY

from fod.bench.baselines import (
    gaussian_distance,
    mean_distance,
    nearest_distance,
    score_baseline,
)
from fod.cli.main import main
from fod.data.synthetic import generate


def _maps(seed: int, n: int, c: int = 5, h: int = 3, w: int = 4) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, c, h, w)))


def test_mean_distance_matches_a_loop() -> None:
    train, test = _maps(0, 9), _maps(1, 4)
    a, b = train.numpy(), test.numpy()
    expected = np.zeros((4, 3, 4))
    for i in range(3):
        for j in range(4):
            mu = a[:, :, i, j].mean(0)
            expected[:, i, j] = ((b[:, :, i, j] - mu) ** 2).mean(1)
    np.testing.assert_allclose(mean_distance(train, test).numpy(), expected, rtol=1e-10)


def test_gaussian_distance_matches_numpy_mahalanobis() -> None:
    train, test = _maps(2, 12), _maps(3, 3)
    a, b = train.numpy(), test.numpy()
    expected = np.zeros((3, 3, 4))
    for i in range(3):
        for j in range(4):
            x = a[:, :, i, j]
            cov = np.cov(x, rowvar=False) + 0.5 * np.eye(5)
            prec = np.linalg.inv(cov)
            y = b[:, :, i, j] - x.mean(0)
            expected[:, i, j] = np.sqrt(np.einsum("nc,cd,nd->n", y, prec, y))
    got = gaussian_distance(train, test, ridge=0.5).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_nearest_distance_with_the_whole_bank_is_brute_force() -> None:
    train, test = _maps(4, 6), _maps(5, 2)
    bank = train.permute(0, 2, 3, 1).reshape(-1, 5).numpy()
    q = test.permute(0, 2, 3, 1).reshape(-1, 5).numpy()
    expected = np.sqrt(((q[:, None, :] - bank[None]) ** 2).sum(-1)).min(1).reshape(2, 3, 4)
    got = nearest_distance(train, test, bank_size=10_000, chunk=7).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    # A subsampled bank can only be farther away, never closer.
    sub = nearest_distance(train, test, bank_size=10).numpy()
    assert np.all(sub >= got - 1e-12) and np.any(sub > got + 1e-9)


def test_a_training_map_has_zero_nearest_distance_and_outliers_score_high() -> None:
    train = _maps(6, 8)
    test = torch.cat([train[:1], train[:1] + 5.0])
    maps, scores = score_baseline("nearest", [train], [test], image_size=16)
    assert maps.shape == (2, 16, 16)
    assert float(maps[0].abs().max()) < 1e-6
    assert scores[1] > scores[0]


def test_unknown_baseline_and_mismatched_levels_are_refused() -> None:
    train = _maps(7, 4)
    with pytest.raises(ValueError, match="unknown baseline 'knn'"):
        score_baseline("knn", [train], [train], 8)
    with pytest.raises(ValueError, match="must be"):
        mean_distance(train, train[:, :3])


def test_cli_scores_generated_data(generated: Path, tmp_path: Path) -> None:
    out = tmp_path / "baselines.json"
    args = ["bench", "baselines", str(generated), "--backbone", TINY["backbone"]]
    args += [
        "--image-size",
        str(TINY["image_size"]),
        "--json",
        str(out),
        "--quiet",
        "--cache",
        str(tmp_path / "c"),
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    per = report["categories"]["board"]
    assert set(per) == {"mean", "gaussian", "nearest"}
    for metrics in per.values():
        assert 0.0 <= metrics["image_auroc"] <= 1.0
        n = GENERATED["n_test_good"] + GENERATED["n_test_per_defect"] * len(GENERATED_DEFECTS)
        assert metrics["counts"]["images"] == n
    assert report["settings"]["image_size"] == TINY["image_size"]
    assert list((tmp_path / "c").glob("*.pt"))  # the features went through the shared cache


def test_load_masks_matches_the_mask_files(tmp_path: Path) -> None:
    """Ground truth for precomputed features: the mask files resized, zeros for good images."""
    from fod.data import load_category, load_image, load_mask, load_masks, resize_mask

    data = generate(
        tmp_path / "data", ("tiles",), image_size=48, n_train=2, n_test_good=2,
        n_test_per_defect=1, seed=4,
    )  # fmt: skip
    samples = load_category(data / "tiles").test
    masks = load_masks(samples, 32)
    assert masks.shape == (len(samples), 32, 32) and masks.dtype == bool
    for sample, got in zip(samples, masks, strict=True):
        if sample.mask is None:
            assert not got.any()
        else:
            size = load_image(sample.image).shape[:2]
            expected = resize_mask(load_mask(sample.mask, size=size), 32)
            np.testing.assert_array_equal(got, expected)
            assert got.any()
    assert load_masks([], 16).shape == (0, 16, 16)
