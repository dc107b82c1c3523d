"""Scoring: upsampling, blur and the Detector against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bilinear_numpy
from scipy import ndimage

from fod.backbone import create_backbone
from fod.model import FODTransformer, LevelSpec, Variant, mean_reference, token_scores
from fod.scoring import (
    Detector,
    anomaly_map,
    blurred_upsample,
    gaussian_blur,
    gaussian_kernel,
    image_scores,
    score_features,
)

S = 64


def test_anomaly_map_upsamples_each_level_and_averages() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((2, 4, 4))
    b = rng.random((2, 3, 5))  # levels need not be square
    got = anomaly_map([torch.from_numpy(a), torch.from_numpy(b)], 16).numpy()
    assert got.shape == (2, 16, 16)
    for i in range(2):
        want = (bilinear_numpy(a[i], 16, 16) + bilinear_numpy(b[i], 16, 16)) / 2
        np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-12)


def test_anomaly_map_known_values() -> None:
    # 1 x 2 map [0, 1] to width 4: centres at -0.25, 0.25, 0.75, 1.25 -> clamp and interpolate
    level = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    got = anomaly_map([level], 4)[0]
    for row in got:
        np.testing.assert_allclose(row.numpy(), [0.0, 0.25, 0.75, 1.0])


def test_anomaly_map_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        anomaly_map([], 8)
    with pytest.raises(ValueError):
        anomaly_map([torch.zeros(4, 4)], 8)


@pytest.mark.parametrize("sigma", [4.0, 1.5, 0.7])
@pytest.mark.parametrize("shape", [(64, 64), (5, 7), (40, 23)])
def test_gaussian_blur_matches_scipy(sigma: float, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    maps = rng.random((2, *shape))
    got = gaussian_blur(torch.from_numpy(maps), sigma).numpy()
    for i in range(2):
        want = ndimage.gaussian_filter(maps[i], sigma, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(got[i], want, rtol=1e-10, atol=1e-12)


def test_gaussian_blur_float32_close_to_scipy() -> None:
    maps = np.random.default_rng(2).random((1, 64, 64)).astype(np.float32)
    got = gaussian_blur(torch.from_numpy(maps)).numpy()
    want = ndimage.gaussian_filter(maps[0].astype(np.float64), 4.0, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "size", "sigma"), [((4, 4), 16, 4.0), ((3, 5), 12, 4.0), ((16, 16), 256, 4.0)]
)
def test_blurred_upsample_is_the_blur_of_the_upsampled_map(
    shape: tuple[int, int], size: int, sigma: float
) -> None:
    # scipy's blur of the numpy bilinear upsampling; the small sizes fold the reflection
    rng = np.random.default_rng(3)
    levels = rng.standard_normal((2, 3, *shape))
    got = blurred_upsample(torch.from_numpy(levels), size, sigma).numpy()
    assert got.shape == (2, 3, size, size)
    for i in range(2):
        for j in range(3):
            up = bilinear_numpy(levels[i, j], size, size)
            want = ndimage.gaussian_filter(up, sigma, mode="reflect", truncate=4.0)
            np.testing.assert_allclose(got[i, j], want, rtol=1e-10, atol=1e-12)
    z32 = torch.from_numpy(levels[0]).float()
    slow = gaussian_blur(anomaly_map([z32], size), sigma)
    np.testing.assert_allclose(blurred_upsample(z32, size, sigma), slow, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="must be"):
        blurred_upsample(torch.zeros(4), size)


def test_gaussian_kernel() -> None:
    k = gaussian_kernel(4.0)
    assert k.numel() == 2 * 16 + 1  # radius int(4 * 4 + 0.5)
    assert torch.isclose(k.sum(), torch.tensor(1.0, dtype=k.dtype))
    with pytest.raises(ValueError):
        gaussian_kernel(0.0)


def test_image_scores_is_max_of_blurred_map() -> None:
    maps = np.random.default_rng(3).random((3, 32, 32))
    got = image_scores(torch.from_numpy(maps)).numpy()
    want = [ndimage.gaussian_filter(m, 4.0, mode="reflect", truncate=4.0).max() for m in maps]
    np.testing.assert_allclose(got, want, rtol=1e-10)


# ------------------------------------------------------------------------------- Detector


@pytest.fixture(scope="module")
def detector_parts() -> tuple:
    backbone = create_backbone("efficientnet_lite0")
    torch.manual_seed(0)
    with torch.no_grad():
        feats = backbone(torch.rand(3, 3, S, S))
    levels = []
    for f, d in zip(feats, (32, 16), strict=True):
        spec = LevelSpec(f.shape[1], f.shape[2], f.shape[3], d, heads=2, layers=1)
        levels.append(FODTransformer(spec, Variant(), mean_reference(f)).eval())
    return backbone, levels


def test_detector_matches_step_by_step_computation(detector_parts: tuple) -> None:
    backbone, levels = detector_parts
    detector = Detector(backbone, levels, S)
    images = torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(5))
    maps, scores = detector(images)
    assert maps.shape == (2, S, S) and scores.shape == (2,)
    assert not maps.requires_grad

    with torch.no_grad():
        feats = backbone(images)
        per_level = [
            token_scores(m(f), m.variant, m.spec.height, m.spec.width).double().numpy()
            for m, f in zip(levels, feats, strict=True)
        ]
    for i in range(2):
        want = np.mean([bilinear_numpy(lv[i], S, S) for lv in per_level], axis=0)
        np.testing.assert_allclose(maps[i].numpy(), want, rtol=1e-5, atol=1e-6)
        blurred = ndimage.gaussian_filter(want, 4.0, mode="reflect", truncate=4.0)
        assert scores[i].item() == pytest.approx(blurred.max(), rel=1e-5)


def test_detector_score_features_equals_forward(detector_parts: tuple) -> None:
    backbone, levels = detector_parts
    detector = Detector(backbone, levels, S)
    images = torch.rand(3, 3, S, S, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        feats = backbone(images)
    maps, scores = detector(images)
    maps2, scores2 = score_features(levels, feats, S, batch_size=2)
    torch.testing.assert_close(maps, maps2)
    torch.testing.assert_close(scores, scores2)


def test_detector_stays_in_eval_mode_and_checks_input(detector_parts: tuple) -> None:
    backbone, levels = detector_parts
    detector = Detector(backbone, levels, S)
    detector.train()
    assert not detector.training and not any(m.training for m in detector.modules())
    with pytest.raises(ValueError, match="64 x 64"):
        detector(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="level models"):
        Detector(backbone, levels[:1], S)


def test_scoring_exports_with_torch_export() -> None:
    """Upsampling, blur and max are plain tensor ops: torch.export captures them exactly."""

    class Scorer(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            maps = anomaly_map([a, b], S)
            return maps, image_scores(maps)

    a, b = torch.rand(2, 8, 8), torch.rand(2, 4, 4)
    exported = torch.export.export(Scorer(), (a, b)).module()
    a, b = torch.rand(2, 8, 8), torch.rand(2, 4, 4)
    for got, want in zip(exported(a, b), Scorer()(a, b), strict=True):
        torch.testing.assert_close(got, want)
