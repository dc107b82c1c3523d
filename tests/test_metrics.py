"""Metrics against sklearn, brute force and an independent slow AUPRO, plus hand-made cases."""

from __future__ import annotations

import itertools
import json
import tracemalloc

import numpy as np
import pytest
from skimage.measure import label as sk_label
from sklearn.metrics import roc_auc_score

from fod.errors import MetricError
from fod.metrics import (
    aupro,
    auroc_from_groups,
    evaluate,
    f1_max,
    image_auroc,
    pixel_auroc,
    pro_curve,
)

# ---------------------------------------------------------------------------------------------
# AUROC


@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[0], labels[1] = True, False
    scores = rng.integers(0, 7, n).astype(np.float64)  # few values: many ties
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_auroc(labels.astype(int), scores.astype(np.float32)) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12
    )


def test_auroc_from_groups_both_orientations() -> None:
    rng = np.random.default_rng(1)
    small = np.round(rng.normal(1, 1, 13), 1)
    large = np.round(rng.normal(0, 1, 400), 1)
    for pos, neg in ((small, large), (large, small)):
        y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
        ref = roc_auc_score(y, np.r_[pos, neg])
        pos_before, neg_before = pos.copy(), neg.copy()
        assert auroc_from_groups(pos, neg) == pytest.approx(ref, abs=1e-12)
        np.testing.assert_array_equal(pos, pos_before)  # inputs untouched without overwrite
        np.testing.assert_array_equal(neg, neg_before)


def test_auroc_extremes() -> None:
    assert image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert image_auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert image_auroc([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert image_auroc([0, 1], [-np.inf, np.inf]) == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_auroc_matches_sklearn_on_flattened(dtype: type) -> None:
    rng = np.random.default_rng(2)
    masks = rng.random((4, 16, 16)) < 0.1
    maps = np.round(rng.random((4, 16, 16)) + 0.3 * masks, 2).astype(dtype)
    ref = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(ref, abs=1e-12)
    assert pixel_auroc(masks.astype(np.uint8) * 255, maps) == pytest.approx(ref, abs=1e-12)
    maps_before = maps.copy()
    pixel_auroc(masks, maps)
    np.testing.assert_array_equal(maps, maps_before)


def test_pixel_auroc_is_memory_lean() -> None:
    """A few bytes per pixel beyond the inputs (sklearn needs tens)."""
    rng = np.random.default_rng(3)
    masks = np.zeros((40, 128, 128), dtype=bool)
    masks[::2, 20:60, 30:70] = True
    maps = rng.random(masks.shape, dtype=np.float32) + masks
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        value = pixel_auroc(masks, maps)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert value == 1.0
    assert peak / masks.size < 8, f"{peak / masks.size:.1f} bytes per pixel"


# ---------------------------------------------------------------------------------------------
# F1-max


def _f1_brute(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    best, best_t = -1.0, None
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp = int(np.sum(pred & labels))
        fp = int(np.sum(pred & ~labels))
        fn = int(np.sum(~pred & labels))
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
        if f1 > best + 1e-15:
            best, best_t = f1, t
    return best, best_t


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(120) < 0.4
    labels[0] = True
    scores = np.round(rng.normal(0, 1, 120) + labels, 1)
    f1, t = f1_max(labels, scores)
    ref_f1, ref_t = _f1_brute(labels, scores)
    assert f1 == pytest.approx(ref_f1, abs=1e-12)
    assert t == ref_t
    pred = scores >= t
    tp = np.sum(pred & labels)
    assert 2 * tp / (pred.sum() + labels.sum()) == pytest.approx(f1, abs=1e-12)


def test_f1_max_perfect_separation() -> None:
    assert f1_max([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 0.8)


# ---------------------------------------------------------------------------------------------
# AUPRO


def _aupro_slow(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Direct transcription of the definition: loops over thresholds, regions and points."""
    regions = []
    for mask, amap in zip(masks, maps, strict=True):
        labelled = sk_label(mask, connectivity=2)  # 8-connectivity
        for k in range(1, labelled.max() + 1):
            regions.append(amap[labelled == k])
    normal = maps[~masks]
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        pro = sum(np.sum(r >= t) / r.size for r in regions) / len(regions)
        fpr = np.sum(normal >= t) / normal.size
        points.append((float(fpr), float(pro)))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < max_fpr:
                y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
                area += (max_fpr - x0) * (y0 + y_at) / 2
            break
    return area / max_fpr


def _two_images() -> np.ndarray:
    """Two 8x8 images: a 2x2 square and a 7-pixel L in one, a diagonal chain in the other."""
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 1:3, 1:3] = True  # 4 pixels
    masks[0, 4:8, 5] = True  # L: 4 + 3 = 7 pixels
    masks[0, 7, 2:5] = True
    masks[1, [2, 3, 4], [2, 3, 4]] = True  # diagonal: one region only with 8-connectivity
    return masks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_aupro_matches_slow_reference(seed: int, max_fpr: float) -> None:
    rng = np.random.default_rng(seed)
    masks = _two_images()
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 1)  # coarse: ties across classes
    ref = _aupro_slow(masks, maps, max_fpr)
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_slow_reference_distinct_scores(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    masks = np.concatenate([_two_images(), np.zeros((1, 8, 8), dtype=bool)])
    maps = rng.random(masks.shape) + 0.5 * masks
    assert aupro(masks, maps) == pytest.approx(_aupro_slow(masks, maps), abs=1e-12)


def test_aupro_hand_computed_cases() -> None:
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 1:4, 1:4] = True  # two regions of 9 pixels
    masks[1, 4:7, 4:7] = True
    perfect = masks.astype(float)
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, -perfect) == pytest.approx(0.0, abs=1e-12)
    # Region 1 found before any false positive, region 2 scored below every normal pixel.
    half = np.full(masks.shape, 0.5)
    half[0][masks[0]] = 1.0
    half[1][masks[1]] = 0.0
    assert aupro(masks, half) == pytest.approx(0.5, abs=1e-12)


def test_aupro_interpolates_at_the_limit() -> None:
    """Region A (4 px) found at once; region B (16 px) tied with all normal pixels.

    The tie is a straight segment from (FPR 0, PRO 0.5) to (1, 1): PRO(0.3) = 0.65, so the
    area up to 0.3 is 0.3 * (0.5 + 0.65) / 2 and the normalised AUPRO is 0.575.
    """
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 4:8, 4:8] = True
    maps = np.zeros(masks.shape)
    maps[0][masks[0]] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.575, abs=1e-12)
    assert aupro(masks, maps, max_fpr=1.0) == pytest.approx(0.75, abs=1e-12)


def test_aupro_averages_regions_not_pixels_and_uses_8_connectivity() -> None:
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # one region (diagonal neighbours)
    masks[0, 5, 5] = True  # second region
    maps = np.full(masks.shape, 0.5)
    maps[0, 1, 1] = maps[0, 5, 5] = 0.0
    maps[0, 0, 0] = 1.0  # half of region 1 found: PRO = (1/2 + 0) / 2
    assert aupro(masks, maps) == pytest.approx(0.25, abs=1e-12)  # 4-connectivity gives 1/3


def test_aupro_fpr_counts_normal_pixels_of_all_images() -> None:
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2:4, 2:4] = True  # 4 defect pixels, 60 + 64 = 124 normal pixels
    maps = np.zeros(masks.shape)
    maps[0][masks[0]] = 1.0
    maps[1, :2, :] = 2.0  # 16 normal pixels of the good image above every defect
    maps[1, 2, :3] = 2.0  # 19 in all
    expected = (0.3 - 19 / 124) / 0.3
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pro_curve_vertices_lie_on_the_reference_curve() -> None:
    rng = np.random.default_rng(7)
    masks = _two_images()
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 1)
    fpr, pro, thr = pro_curve(masks, maps)
    assert fpr[0] == 0 and pro[0] == 0 and fpr[-1] == 1 and pro[-1] == pytest.approx(1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-15)
    normal = maps[~masks]
    region_px = [maps[0][sk_label(masks[0], connectivity=2) == k] for k in (1, 2)]
    region_px.append(maps[1][masks[1]])
    for f, p, t in zip(fpr[1:], pro[1:], thr[1:], strict=True):
        assert f == pytest.approx(np.mean(normal >= t), abs=1e-12)
        assert p == pytest.approx(np.mean([np.mean(r >= t) for r in region_px]), abs=1e-12)


def test_aupro_binned_close_to_exact() -> None:
    rng = np.random.default_rng(4)
    masks = np.zeros((6, 64, 64), dtype=bool)
    masks[0, 10:30, 10:20] = True
    masks[1, 40:44, 40:60] = True
    masks[2, 5:9, 5:9] = True
    maps = rng.normal(0, 1, masks.shape) + 1.5 * masks
    exact = aupro(masks, maps)
    assert aupro(masks, maps, num_thresholds=1000) == pytest.approx(exact, abs=2e-3)
    assert 0.1 < exact < 0.9


# ---------------------------------------------------------------------------------------------
# Errors


def test_errors_name_the_problem() -> None:
    with pytest.raises(MetricError, match="no anomalous images"):
        image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(MetricError, match="no normal images"):
        image_auroc([1, 1], [0.1, 0.2])
    with pytest.raises(MetricError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(MetricError, match=r"\(3,\).*\(4,\)"):
        image_auroc([0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(MetricError, match="0 and 1"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(MetricError, match="no anomalous samples"):
        f1_max([0, 0], [0.1, 0.2])

    empty = np.zeros((2, 8, 8), dtype=bool)
    maps = np.zeros((2, 8, 8))
    for fn in (pixel_auroc, aupro):
        with pytest.raises(MetricError, match="no defective pixels"):
            fn(empty, maps)
        with pytest.raises(MetricError, match="no normal"):
            fn(~empty, maps)
        with pytest.raises(MetricError, match=r"\(2, 8, 8\).*\(2, 8, 9\)"):
            fn(empty, np.zeros((2, 8, 9)))
        bad = maps.copy()
        bad[0, 0, 0] = np.nan
        with pytest.raises(MetricError, match="1 NaN"):
            fn(~empty, bad)
    with pytest.raises(MetricError, match="max_fpr"):
        aupro(_two_images(), np.zeros((2, 8, 8)), max_fpr=0.0)


# ---------------------------------------------------------------------------------------------
# evaluate


def _category(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    types = ["good"] * 4 + ["crack"] * 3 + ["scratch"] * 2
    labels = np.array([t != "good" for t in types], dtype=int)
    masks = np.zeros((len(types), 16, 16), dtype=bool)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(0, 10, 2)
        masks[i, y : y + 5, x : x + 4] = True
    maps = rng.random(masks.shape) + 0.6 * masks
    scores = maps.reshape(len(types), -1).max(axis=1)
    return labels, scores, masks, maps, types


def test_evaluate_overall_and_per_defect() -> None:
    labels, scores, masks, maps, types = _category()
    res = evaluate(labels, scores, masks, maps, types)
    assert res["image_auroc"] == pytest.approx(image_auroc(labels, scores))
    assert res["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps))
    assert res["aupro"] == pytest.approx(aupro(masks, maps))
    assert (res["f1_max"], res["f1_threshold"]) == f1_max(labels, scores)
    assert set(res["per_defect"]) == {"crack", "scratch"}
    chosen = np.array([t in ("good", "crack") for t in types])
    crack = res["per_defect"]["crack"]
    assert crack["image_auroc"] == pytest.approx(image_auroc(labels[chosen], scores[chosen]))
    assert crack["pixel_auroc"] == pytest.approx(pixel_auroc(masks[chosen], maps[chosen]))
    assert crack["aupro"] == pytest.approx(aupro(masks[chosen], maps[chosen]))
    assert crack["count"] == 3
    assert res["counts"]["images"] == 9 and res["counts"]["anomalous"] == 5
    assert res["counts"]["defective_pixels"] == int(masks.sum())
    assert res["reasons"] == {}
    assert json.loads(json.dumps(res)) == res  # plain Python values only


def test_evaluate_undefined_values_are_none_with_reason() -> None:
    labels, scores, masks, maps, types = _category(1)
    res = evaluate(labels, scores, None, None, types)
    assert res["pixel_auroc"] is None and res["aupro"] is None
    assert "mask" in res["reasons"]["aupro"]
    assert res["image_auroc"] is not None

    good_only = evaluate(np.zeros(4), scores[:4], masks[:4], maps[:4], types[:4])
    assert good_only["image_auroc"] is None and good_only["f1_max"] is None
    assert "no anomalous images" in good_only["reasons"]["image_auroc"]
    assert "no defective pixels" in good_only["reasons"]["pixel_auroc"]
    assert good_only["per_defect"] == {}

    nan_scores = scores.copy()
    nan_scores[0] = np.nan
    res = evaluate(labels, nan_scores, masks, maps, types)
    assert res["image_auroc"] is None and "NaN" in res["reasons"]["image_auroc"]
    assert res["per_defect"]["crack"]["image_auroc"] is None
    assert res["aupro"] is not None

    empty_masks = masks.copy()
    empty_masks[labels == 1] = False  # anomalous images without annotation
    res = evaluate(labels, scores, empty_masks, maps, types)
    assert res["aupro"] is None and res["counts"]["anomalous_with_empty_mask"] == 5

    with pytest.raises(MetricError, match="one entry per test image"):
        evaluate(labels, scores[:-1], masks, maps, types)
