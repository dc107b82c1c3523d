"""Synthetic anomalies and the validation on them: masks against their pixels, the level-weight
choice and the threshold against brute force, and the whole path through fit, a model file and
the detector."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from scipy.ndimage import gaussian_filter

from fod.config import BAND_MEMBERS, FODConfig, legacy_config
from fod.data.anomalies import (
    CONTENT_SHARE,
    KINDS,
    MAX_AREA,
    MIN_AREA,
    MIN_CHANGE,
    PLACEMENTS,
    add_anomaly,
    anomaly_region,
    content_mask,
    perlin_noise,
    placed_region,
    synthetic_anomalies,
)
from fod.scoring.detector import weighted_image_scores, weighting_maxima
from fod.scoring.head import CalibratedHead
from fod.training.validation import (
    BAND_MIN_HELDOUT,
    THRESHOLD_RULE,
    auroc_standard_error,
    band_scales,
    grid_image_scores,
    image_weights,
    nearest_plain,
    rate_weightings,
    resolve_rule,
    rule_weights,
    separating_threshold,
    simplest,
    weight_grid,
    weightings,
)


def choose_image_weighting(good, anomalous, parts, size, sigma):
    """The single rule as validate applies it: the band's row nearest the plain average, and
    the whole table."""
    table, near, _, _ = rate_weightings(good, anomalous, parts, size, sigma)
    return table[nearest_plain(table, near)], table


def _good_images(n: int = 3, size: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0.2, 0.8, size).view(1, 1, 1, size).expand(n, 3, size, size)
    return (base + 0.05 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def test_perlin_noise_vanishes_on_the_lattice_and_stays_bounded():
    rng = np.random.default_rng(0)
    noise = perlin_noise(64, 48, (4, 3), rng)
    assert noise.shape == (64, 48)
    # lattice points fall on every 16th pixel in both axes: gradient noise is 0 there
    np.testing.assert_allclose(noise[::16, ::16], 0.0, atol=1e-12)
    assert np.abs(noise).max() <= 1.0 + 1e-9
    assert noise.std() > 0.1
    # smooth: neighbouring pixels differ far less than the range
    assert np.abs(np.diff(noise, axis=0)).max() < 0.2


def test_regions_cover_a_bounded_share_of_the_image():
    for seed in range(20):
        region = anomaly_region(64, 64, np.random.default_rng(seed))
        assert region.dtype == bool
        assert 0 < region.mean() <= MAX_AREA + 1e-9
    larger = [anomaly_region(64, 64, np.random.default_rng(s), max_area=0.5) for s in range(40)]
    areas = np.array([r.mean() for r in larger])
    assert areas.max() <= 0.5 + 1e-9 and (areas > MAX_AREA).any()
    with pytest.raises(ValueError, match="max_area must be in"):
        anomaly_region(64, 64, np.random.default_rng(0), max_area=1.5)


@pytest.mark.parametrize("kind", KINDS)
def test_masks_are_exactly_the_changed_pixels(kind):
    images = _good_images(2)
    img, other = images[0].numpy(), images[1].numpy()
    for seed in range(4):
        out, mask = add_anomaly(img, other, kind, np.random.default_rng(seed))
        changed = np.zeros(mask.shape, dtype=bool)
        for y, x in itertools.product(range(mask.shape[0]), range(mask.shape[1])):
            changed[y, x] = any(abs(out[c, y, x] - img[c, y, x]) > MIN_CHANGE for c in range(3))
        np.testing.assert_array_equal(mask, changed)
        np.testing.assert_array_equal(out[:, ~mask], img[:, ~mask])  # untouched outside
        assert mask.any() and out.min() >= 0 and out.max() <= 1


def test_synthetic_anomalies_are_seeded_and_cycle_through_kinds():
    images = _good_images(3)
    a, masks, kinds = synthetic_anomalies(images, 7, seed=5)
    b, masks_b, _ = synthetic_anomalies(images, 7, seed=5)
    c, _, _ = synthetic_anomalies(images, 7, seed=6)
    assert a.shape == (7, 3, 48, 48) and masks.shape == (7, 48, 48) and masks.dtype == torch.bool
    assert torch.equal(a, b) and torch.equal(masks, masks_b)
    assert not torch.equal(a, c)
    assert set(kinds) == set(KINDS)
    for i in range(7):  # each made from image i % 3, changed exactly under its mask
        diff = (a[i] - images[i % 3]).abs().amax(0)
        assert torch.equal(diff > MIN_CHANGE, masks[i])
    with pytest.raises(ValueError, match="count >= 1"):
        synthetic_anomalies(images, 0)
    _, wide, _ = synthetic_anomalies(images, 12, seed=5, max_area=0.5)
    for i in range(12):  # a region of at most half the image; changed pixels lie inside it
        assert 0 < float(wide[i].float().mean()) <= 0.5 + 1e-9


def _object_on_plain_ground(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Grey images with a textured square (the product) at a different place in each."""
    g = torch.Generator().manual_seed(seed)
    images = torch.full((n, 3, size, size), 0.5)
    for i in range(n):
        y, x = 6 + 9 * i, 30 - 8 * i
        images[i, :, y : y + 24, x : x + 24] = torch.rand(3, 24, 24, generator=g)
    return images


def test_content_mask_matches_a_loop_over_windows():
    rng = np.random.default_rng(0)
    image = np.full((3, 32, 40), 0.5)
    image[:, 8:20, 10:30] = rng.random((3, 12, 20))
    image[:, 24:28, 2:6] += 0.05 * rng.random((3, 4, 4))  # faint texture: below the share
    grey = image.mean(axis=0)
    side = 3  # 9 pixels at input 256, scaled to 40 pixels and kept odd and at least 3
    padded = np.pad(grey, side // 2, mode="symmetric")
    spread = np.empty_like(grey)
    for y, x in itertools.product(range(grey.shape[0]), range(grey.shape[1])):
        spread[y, x] = padded[y : y + side, x : x + side].std()
    want = spread > CONTENT_SHARE * np.quantile(spread, 0.95)
    got = content_mask(image)
    np.testing.assert_array_equal(got, want)
    assert got[10:18, 12:28].all() and not got[24:28, 2:6].any() and not got[:5].any()
    assert content_mask(np.full((3, 16, 16), 0.3)).all()  # flat: texture everywhere


def test_content_placement_keeps_anomalies_on_the_product():
    images = _object_on_plain_ground()
    product = [content_mask(im.numpy()) for im in images]
    _, masks, _ = synthetic_anomalies(images, 24, seed=1, placement="content")
    for i, mask in enumerate(masks.numpy()):
        assert mask.mean() >= MIN_AREA / 4 and not (mask & ~product[i % 3]).any()
    _, anywhere, _ = synthetic_anomalies(images, 24, seed=1, placement="anywhere")
    outside = [(m & ~product[i % 3]).mean() for i, m in enumerate(anywhere.numpy())]
    assert np.mean(outside) > 0.01  # the whole image: most of it is plain ground
    assert sum(p > 0 for p in outside) >= 12
    with pytest.raises(ValueError, match="placement must be one of content, anywhere"):
        synthetic_anomalies(images, 2, placement="object")
    assert PLACEMENTS == ("content", "anywhere")


def test_placed_regions_are_cut_to_the_allowed_pixels_or_drawn_whole():
    allowed = np.zeros((64, 64), dtype=bool)
    allowed[16:48, 16:48] = True
    for seed in range(10):
        region = placed_region(64, 64, np.random.default_rng(seed), allowed=allowed)
        assert region.mean() >= MIN_AREA and not (region & ~allowed).any()
        # without a cut, the same generator draws the same first region as anomaly_region
        plain = placed_region(64, 64, np.random.default_rng(seed))
        np.testing.assert_array_equal(plain, anomaly_region(64, 64, np.random.default_rng(seed)))
    speck = np.zeros((64, 64), dtype=bool)
    speck[0, 0] = True  # too little room: the last draw, uncut
    region = placed_region(64, 64, np.random.default_rng(0), allowed=speck)
    assert region.mean() >= MIN_AREA and (region & ~speck).any()


def test_weight_grid_is_every_step_weighting_summing_to_one():
    assert weight_grid(1) == [(1.0,)]
    assert weight_grid(2) == [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    three = weight_grid(3)
    brute = {w for w in itertools.product((0, 0.25, 0.5, 0.75, 1.0), repeat=3) if sum(w) == 1.0}
    assert set(three) == brute and len(three) == 15


def test_weighted_image_scores_match_scipy():
    g = torch.Generator().manual_seed(0)
    # two levels of two parts; the image score keeps part 0 only, levels weighted 1/4, 3/4
    levels = [torch.rand(2, 2, 8, 8, generator=g), torch.rand(2, 2, 4, 4, generator=g)]
    weights = image_weights((0.25, 0.75), (True, False))
    assert [w.tolist() for w in weights] == [[0.5, 0.0], [1.5, 0.0]]
    got = weighted_image_scores(levels, weights, 32, sigma=2.0)
    ups = [
        F.interpolate(s[:, :1], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
        for s in levels
    ]
    mixed = (0.25 * ups[0] + 0.75 * ups[1]).double().numpy()
    want = [gaussian_filter(m, 2.0, mode="reflect", truncate=4.0).max() for m in mixed]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


def _scipy_image_score(levels: list[torch.Tensor], weights: list[list[float]], size: int) -> list:
    """Per image: upsample each level's parts, weigh them, average the levels, blur with
    scipy, take the maximum (one weighting, as the paper's score is formed)."""
    mixed = sum(
        torch.einsum(
            "bphw,p->bhw",
            F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False),
            torch.tensor(w, dtype=z.dtype),
        )
        for z, w in zip(levels, weights, strict=True)
    ) / len(levels)
    return [gaussian_filter(m, 2.0, mode="reflect", truncate=4.0).max() for m in mixed.numpy()]


def test_several_weightings_give_the_mean_of_their_maxima():
    g = torch.Generator().manual_seed(2)
    levels = [torch.randn(3, 2, 8, 8, generator=g), torch.randn(3, 2, 4, 4, generator=g)]
    rows = [([2.0, 0.0], [0.0, 0.0]), ([0.5, 0.5], [1.5, 1.5]), ([0.0, 0.25], [0.0, 3.0])]
    per_level = [torch.tensor([r[i] for r in rows]) for i in range(2)]  # (K, P) per level
    maxima = weighting_maxima(levels, per_level, 32, sigma=2.0)
    want = np.array([_scipy_image_score(levels, list(r), 32) for r in rows]).T  # (B, K)
    np.testing.assert_allclose(maxima.numpy(), want, rtol=1e-5, atol=1e-6)
    got = weighted_image_scores(levels, per_level, 32, sigma=2.0)
    np.testing.assert_allclose(got.numpy(), want.mean(axis=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="1 image weights for 2 levels"):
        weighting_maxima(levels, per_level[:1], 32)


def test_parts_and_levels_no_weighting_uses_are_skipped_and_cannot_spoil_the_score():
    g = torch.Generator().manual_seed(3)
    levels = [torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, 2, 4, 4, generator=g)]
    rows = [([2.0, 0.0], [0.0, 0.0]), ([0.5, 0.0], [0.0, 0.0])]  # part 1 and level 1 unused
    per_level = [torch.tensor([r[i] for r in rows]) for i in range(2)]
    want = np.array([_scipy_image_score(levels, list(r), 32) for r in rows]).T
    spoiled = [levels[0].clone(), torch.full_like(levels[1], float("inf"))]
    spoiled[0][:, 1] = float("nan")
    for scores in (levels, spoiled):
        maxima = weighting_maxima(scores, per_level, 32, sigma=2.0)
        np.testing.assert_allclose(maxima.numpy(), want, rtol=1e-5, atol=1e-6)


def test_weightings_leave_the_heat_map_parts_out_of_every_image_weighting():
    rows = weightings(("residual", "nearest", "pooled"), 2)
    assert len(rows) == 3 * len(weight_grid(2))  # subsets of residual and nearest only
    subsets = {tuple(r["parts"]) for r in rows}
    assert subsets == {("residual", "nearest"), ("residual",), ("nearest",)}
    for row in rows:
        assert all(float(w[2]) == 0.0 for w in row["weights"])
        keep = [p in row["parts"] for p in ("residual", "nearest")]
        for w, level in zip(row["weights"], row["levels"], strict=True):
            assert w[:2].tolist() == [2 * level if k else 0.0 for k in keep]
    assert len(weightings(("residual", "nearest"), 2)) == len(rows)


def test_grid_image_scores_match_the_detector_weighting_by_weighting():
    g = torch.Generator().manual_seed(3)
    levels = [torch.randn(7, 2, 8, 8, generator=g), torch.randn(7, 2, 4, 4, generator=g)]
    weightings = [
        image_weights(w, mask)
        for w in weight_grid(2)
        for mask in ((True, True), (True, False), (False, True))
    ]
    per_level = [torch.stack([w[i] for w in weightings]) for i in range(2)]
    got = grid_image_scores(levels, per_level, 32, sigma=2.0, batch_size=3)
    assert got.shape == (len(weightings), 7)
    for row, weights in zip(got, weightings, strict=True):
        want = weighted_image_scores(levels, weights, 32, sigma=2.0)
        torch.testing.assert_close(row, want, rtol=1e-5, atol=1e-6)


def test_the_band_rule_averages_the_near_best_weightings_over_their_good_spread():
    g = torch.Generator().manual_seed(4)
    n_good, n_anomalous = 12, 40
    # one token per image; level 1 separates, level 0 a little, part "b" on level 1 only, so
    # that the band holds weightings of one part and of two
    good = [torch.randn(n_good, 2, 1, 1, generator=g) for _ in range(2)]
    anomalous = [torch.randn(n_anomalous, 2, 1, 1, generator=g) for _ in range(2)]
    anomalous[0][:, 0] += 0.7
    anomalous[1][:, 0] += 1.5
    anomalous[1][:, 1] += 1.0
    table, near, g_all, _ = rate_weightings(good, anomalous, ("a", "b"), 4, sigma=1.0)
    top = max(r["auroc"] for r in table)
    floor = top - auroc_standard_error(top, n_anomalous, n_good)
    assert near == [i for i, r in enumerate(table) if r["auroc"] >= floor - 1e-12]
    assert 1 < len(near) < len(table)
    members, weights = rule_weights("band", table, near, g_all, ("a", "b"), "all")
    assert members == near and [w.shape for w in weights] == [(len(near), 2)] * 2

    # independently: each member's image scores, each over its good images' spread, averaged
    def member_scores(z: list[torch.Tensor], i: int) -> np.ndarray:
        mask = [p in table[i]["parts"] for p in ("a", "b")]
        return weighted_image_scores(z, image_weights(table[i]["levels"], mask), 4, 1.0).numpy()

    spread = [member_scores(good, i).std(ddof=1) for i in near]
    assert [table[i]["scale"] for i in near] == pytest.approx(spread, rel=1e-5)
    for z in (good, anomalous):
        want = np.mean([member_scores(z, i) / s for i, s in zip(near, spread, strict=True)], axis=0)
        got = weighted_image_scores(z, weights, 4, sigma=1.0).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # single: the near row nearest the plain average, unscaled, as choose_image_weighting
    members, weights = rule_weights("single", table, near, g_all, ("a", "b"))
    best, _ = choose_image_weighting(good, anomalous, ("a", "b"), 4, sigma=1.0)
    assert (table[members[0]]["levels"], table[members[0]]["parts"]) == (
        best["levels"],
        best["parts"],
    )
    mask = [p in best["parts"] for p in ("a", "b")]
    want = image_weights(best["levels"], mask)
    assert [w.tolist() for w in weights] == [[x.tolist()] for x in want]
    with pytest.raises(ValueError, match="rule must be band or single"):
        rule_weights("auto", table, near, g_all, ("a", "b"))
    with pytest.raises(ValueError, match="band_members must be one of simplest, all"):
        rule_weights("band", table, near, g_all, ("a", "b"), "best")
    # simplest (the default): the band's rows with the fewest parts, averaged the same way
    fewest = min(len(table[i]["parts"]) for i in near)
    simple = [i for i in near if len(table[i]["parts"]) == fewest]
    assert simplest(table, near) == simple and 0 < len(simple) < len(near)
    members, weights = rule_weights("band", table, near, g_all, ("a", "b"))
    assert members == simple and [w.shape for w in weights] == [(len(simple), 2)] * 2
    spread = [member_scores(good, i).std(ddof=1) for i in simple]
    for z in (good, anomalous):
        want = np.mean(
            [member_scores(z, i) / s for i, s in zip(simple, spread, strict=True)], axis=0
        )
        got = weighted_image_scores(z, weights, 4, sigma=1.0).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_simplest_keeps_every_row_with_the_fewest_parts_whatever_its_place():
    table = [
        {"levels": [0.5, 0.5], "parts": ["residual", "nearest"], "auroc": 0.99},
        {"levels": [0.5, 0.5], "parts": ["nearest"], "auroc": 0.97},
        {"levels": [0, 1], "parts": ["residual", "feature", "nearest"], "auroc": 0.98},
        {"levels": [0, 1], "parts": ["residual"], "auroc": 0.96},
        {"levels": [1, 0], "parts": ["feature"], "auroc": 0.5},
    ]
    assert simplest(table, [0, 1, 2, 3]) == [1, 3]
    assert simplest(table, [0, 2]) == [0]  # two parts are the fewest there
    assert simplest(table, [2]) == [2]


def test_the_auto_rule_averages_the_band_only_with_enough_held_out_images():
    assert BAND_MIN_HELDOUT == 20
    assert resolve_rule("auto", 19) == "single" and resolve_rule("auto", 20) == "band"
    assert resolve_rule("band", 1) == "band" and resolve_rule("single", 500) == "single"
    with pytest.raises(ValueError, match="rule must be one of auto, band, single"):
        resolve_rule("mean", 30)


def test_band_scales_are_the_good_spread_or_one_without_spread():
    scores = torch.tensor([[1.0, 3.0, 5.0], [2.0, 2.0, 2.0]])
    assert band_scales(scores).tolist() == pytest.approx([2.0, 1e-6])
    assert band_scales(scores[:, :1]).tolist() == [1.0, 1.0]


def test_choose_image_weighting_keeps_what_separates_and_breaks_ties_to_all_and_uniform():
    g = torch.Generator().manual_seed(0)

    def parts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack([a, b], dim=1)

    # level 0 misleads (good images score high there), level 1 separates in part "b" only
    noise = [torch.rand(20, 4, 4, generator=g) for _ in range(4)]
    good = [parts(3 + noise[0], 3 + noise[1]), parts(3 + noise[2], torch.zeros(20, 4, 4))]
    anomalous = [parts(noise[3], noise[3]), parts(noise[1], torch.ones(20, 4, 4))]
    best, table = choose_image_weighting(good, anomalous, ("a", "b"), 16, sigma=1.0)
    assert (best["levels"], best["parts"]) == ([0.0, 1.0], ["b"])
    assert len(table) == 3 * 5 and best["auroc"] == 1.0
    brute = max(table, key=lambda r: r["auroc"])["auroc"]
    assert best["auroc"] == brute
    # everything separates perfectly: all tie at 1.0; all parts and the plain average win
    z, o = torch.zeros(5, 2, 4, 4), torch.ones(5, 2, 4, 4)
    best, _ = choose_image_weighting([z, z], [o, o], ("a", "b"), 16, sigma=1.0)
    assert (best["levels"], best["parts"]) == ([0.5, 0.5], ["a", "b"])


def test_auroc_standard_error_agrees_with_a_bootstrap():
    from fod.metrics.classification import auroc_from_groups

    rng = np.random.default_rng(0)
    for n_pos, n_neg, shift in ((60, 20, 1.0), (200, 80, 2.0), (30, 30, 0.5)):
        pos, neg = rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)
        a = auroc_from_groups(pos, neg)
        boot = [
            auroc_from_groups(rng.choice(pos, n_pos), rng.choice(neg, n_neg)) for _ in range(400)
        ]
        assert auroc_standard_error(a, n_pos, n_neg) == pytest.approx(np.std(boot), rel=0.25)
    assert auroc_standard_error(1.0, 50, 10) == 0.0


def test_one_standard_error_rule_keeps_the_plain_average_unless_clearly_beaten():
    g = torch.Generator().manual_seed(1)
    n = 12  # few good images: a wide standard error

    def level(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
        # one token per image: the image score is the weighted sum of the levels' values
        good = torch.randn(n, 1, 1, 1, generator=g)
        return good, torch.randn(64, 1, 1, 1, generator=g) + shift

    def choose(shift0: float, shift1: float) -> tuple[dict, list[dict]]:
        (g0, a0), (g1, a1) = level(shift0), level(shift1)
        return choose_image_weighting([g0, g1], [a0, a1], ("a",), 4, sigma=1.0)

    # level 1 alone separates a little better than the average: within the noise
    best, table = choose(0.2, 1.0)
    top = max(r["auroc"] for r in table)
    uniform = next(r for r in table if r["levels"] == [0.5, 0.5])
    assert 0 < top - uniform["auroc"] < auroc_standard_error(top, 64, n)
    assert best["levels"] == [0.5, 0.5]
    # level 0 is pure noise and level 1 strong: the average falls clearly behind
    best, table = choose(0.0, 3.0)
    uniform = next(r for r in table if r["levels"] == [0.5, 0.5])
    top = max(r["auroc"] for r in table)
    assert top - uniform["auroc"] > auroc_standard_error(top, 64, n)
    assert best["levels"][1] > 0.5 and best["auroc"] >= top - auroc_standard_error(top, 64, n)


def test_separating_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        good = rng.normal(0, 1, 30).round(1)
        anomalous = rng.normal(1.5, 1, 25).round(1)
        best, best_t = -np.inf, None
        for t in sorted(set(good)):
            gain = np.mean(anomalous > t) - np.mean(good > t)
            if gain >= best - 1e-12:  # later (higher) thresholds win ties
                best, best_t = max(best, gain), t
        assert separating_threshold(good, anomalous) == pytest.approx(best_t)
    good, anomalous = np.array([0.1, 0.4, 0.2]), np.array([0.9, 0.5])
    assert separating_threshold(good, anomalous) == pytest.approx(0.4)


def _kept_rows(report: dict, parts: tuple[str, ...]) -> list[list[float]]:
    """Each level's image_weight rows as the report's kept weightings give them."""
    return [
        [
            [2 * w["levels"][level] * (p in w["parts"]) / w["scale"] for p in parts]
            for w in report["image_weightings"]
        ]
        for level in range(2)
    ]


@pytest.mark.parametrize("asked", ["band", "single", "auto"])
def test_fit_validates_on_synthetic_anomalies_and_saves_the_weights(generated, tmp_path, asked):
    from fod.api import FOD

    model = FOD(tiny_config(image_rule=asked), device="cpu", progress=False).fit(generated)
    report = model.stats["validation"]
    assert report["anomalies"] >= 64 and sum(report["kinds"].values()) == report["anomalies"]
    assert report["placement"] == model.config.anomaly_placement == "content"
    assert report["good_images"] == model.stats["num_holdout"]
    rule = asked if asked != "auto" else ("band" if report["good_images"] >= 20 else "single")
    assert (report["image_rule"], report["image_rule_asked"]) == (rule, asked)
    kept, table = report["image_weightings"], report["weightings"]
    top = max(r["auroc"] for r in table)
    floor = top - auroc_standard_error(top, report["anomalies"], report["good_images"])
    band = [r for r in table if r["auroc"] >= floor - 1e-12]
    for w in kept:
        assert tuple(w["levels"]) in weight_grid(2) and set(w["parts"]) <= {"residual", "nearest"}
    assert all("pooled" not in r["parts"] for r in table) and len(table) == 15
    if rule == "band":  # the band's rows with the fewest parts (band_members simplest)
        fewest = min(len(r["parts"]) for r in band)
        assert report["band_members"] == "simplest" and report["band"] == len(band)
        assert [(w["levels"], w["parts"]) for w in kept] == [
            (r["levels"], r["parts"]) for r in band if len(r["parts"]) == fewest
        ]
    else:
        assert len(kept) == 1 and kept[0]["scale"] == 1.0 and kept[0] in band
    parts = model.config.head_parts
    want = _kept_rows(report, parts)
    for head, rows in zip(model.heads, want, strict=True):
        np.testing.assert_allclose(head.image_weight.numpy(), rows, rtol=1e-6)
    assert model.threshold == pytest.approx(report["threshold"])
    assert model.stats["threshold_rule"] == THRESHOLD_RULE
    path = model.save(tmp_path / "m.pt")
    loaded = FOD.load(path, device="cpu", progress=False)
    for head, rows in zip(loaded.heads, want, strict=True):
        np.testing.assert_allclose(head.image_weight.numpy(), rows, rtol=1e-6)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.score(images)[1], model.score(images)[1])


def test_without_validation_the_levels_are_averaged_and_the_threshold_is_the_max(generated):
    from fod.api import FOD

    model = FOD(tiny_config(validation="none"), device="cpu", progress=False).fit(generated)
    assert "validation" not in model.stats and model.config.image_rule == "single"
    # the plain sum of the image parts; the pooled part stays in the heat map only
    assert model.config.head_parts == ("residual", "nearest", "pooled")
    assert [h.image_weight.tolist() for h in model.heads] == [[[1.0, 1.0, 0.0]]] * 2
    assert model.threshold == model.stats["train_score_max"]


def test_validation_settings_presets_and_legacy_heads():
    assert FODConfig().validation == "synthetic" and FODConfig().image_rule == "auto"
    assert FODConfig.paper().validation == "none" and FODConfig.paper().image_rule == "single"
    assert FODConfig(head="paper", holdout=0.0).validation == "none"
    assert FODConfig(validation="none", image_rule="band").image_rule == "single"
    assert legacy_config({"head": "calibrated"})["validation"] == "none"
    assert legacy_config({"head": "calibrated", "validation": "synthetic"})["image_rule"] == (
        "single"
    )
    with pytest.raises(ValueError, match="validation must be one of synthetic, none"):
        FODConfig(validation="test")
    with pytest.raises(ValueError, match="image_rule must be one of auto, band, single"):
        FODConfig(image_rule="best")
    assert FODConfig().anomaly_placement == "content"
    assert legacy_config({"head": "calibrated"})["anomaly_placement"] == "anywhere"
    assert FODConfig().band_members == "simplest" and BAND_MEMBERS == ("simplest", "all")
    assert legacy_config({"head": "calibrated"})["band_members"] == "all"
    assert legacy_config({"band_members": "simplest"})["band_members"] == "simplest"
    with pytest.raises(ValueError, match="band_members must be one of simplest, all"):
        FODConfig(band_members="fewest")
    with pytest.raises(ValueError, match="anomaly_placement must be one of content, anywhere"):
        FODConfig(anomaly_placement="object")
    head = CalibratedHead(("feature",), FODConfig().variant, 4, 3, 0, 2, 2)
    state = {k: v for k, v in head.state_dict().items() if k != "image_weight"}
    loaded = CalibratedHead.from_state_dict(state, ("feature",), FODConfig().variant, 2, 2)
    assert loaded.image_weight.tolist() == [[1.0]]
    # a file from before several weightings holds one (P,) weight
    older = {**state, "image_weight": torch.tensor([0.5])}
    loaded = CalibratedHead.from_state_dict(older, ("feature",), FODConfig().variant, 2, 2)
    assert loaded.image_weight.tolist() == [[0.5]]
    with pytest.raises(ValueError, match="at least one weighting"):
        CalibratedHead(("feature",), FODConfig().variant, 4, 3, 0, 2, 2, weightings=0)


def test_a_model_file_with_uneven_weightings_is_refused(generated, tmp_path):
    from fod.api import FOD
    from fod.errors import CheckpointError
    from fod.io import save_tensors
    from fod.training import load_model_file

    model = FOD(tiny_config(epochs=1), device="cpu", progress=False).fit(generated)
    data = torch.load(model.save(tmp_path / "m.pt"), weights_only=True)
    head = data["levels"][0]["head"]
    head["image_weight"] = torch.cat([head["image_weight"], head["image_weight"][:1]])
    save_tensors(tmp_path / "uneven.pt", data)
    with pytest.raises(CheckpointError, match="image-score weightings per level"):
        load_model_file(tmp_path / "uneven.pt")
    data["levels"][1]["head"]["image_weight"] = data["levels"][0]["head"]["image_weight"]
    data["config"]["image_rule"] = "single"
    save_tensors(tmp_path / "single.pt", data)
    with pytest.raises(CheckpointError, match="rule 'single' needs one"):
        load_model_file(tmp_path / "single.pt")


def test_cli_train_reports_the_validation_and_can_skip_it(generated, tmp_path, capsys):
    from conftest import tiny_args

    from fod.api import FOD
    from fod.cli.main import main

    out = tmp_path / "m.pt"
    assert main(["train", str(generated), "--out", str(out), *tiny_args()]) == 0
    printed = capsys.readouterr().out
    report = FOD.load(out, device="cpu").stats["validation"]
    assert f", rule auto with {report['good_images']} held-out images (" in printed
    args = ["train", str(generated), "--out", str(out), "--force", "--image-rule", "band"]
    assert main([*args, *tiny_args()]) == 0
    printed = capsys.readouterr().out
    report = FOD.load(out, device="cpu").stats["validation"]
    assert f"synthetic validation: {report['anomalies']} anomalies" in printed
    assert report["image_rule"] == report["image_rule_asked"] == "band"
    assert "rule auto" not in printed
    kept = report["image_weightings"]
    assert f"image score the mean of {len(kept)} weightings of parts and levels" in printed
    if report["band"] > len(kept):
        assert f"(the simplest of the band's {report['band']})" in printed
    assert main([*args, "--band-members", "all", *tiny_args()]) == 0
    printed = capsys.readouterr().out
    whole = FOD.load(out, device="cpu")
    assert whole.config.band_members == whole.stats["validation"]["band_members"] == "all"
    band = whole.stats["validation"]["image_weightings"]
    assert len(band) == whole.stats["validation"]["band"] >= len(kept)
    assert f"image score the mean of {len(band)} weightings of parts and levels (" in printed
    first = kept[0]
    listed = f"{' + '.join(first['parts'])} at {' / '.join(f'{x:g}' for x in first['levels'])}"
    assert listed in printed
    assert (
        "anomalies on the held-out images (where they have texture), each scored by the heads "
        "of its image's fold; "
    ) in printed  # cross-fitted: the generated category has 16 good images
    args = ["train", str(generated), "--out", str(out), "--force", "--image-rule", "single"]
    assert main([*args, "--anomaly-placement", "anywhere", *tiny_args()]) == 0
    printed = capsys.readouterr().out
    assert "image score one weighting of parts and levels" in printed
    assert "anomalies on the held-out images (anywhere on them), each scored by" in printed
    loaded = FOD.load(out, device="cpu")
    assert loaded.config.image_rule == "single"
    assert loaded.config.anomaly_placement == loaded.stats["validation"]["placement"] == "anywhere"
    args = ["train", str(generated), "--out", str(out), "--force", "--validation", "none"]
    pooled = ["--bank-selection", "random", "--nearest-pool", "3"]
    assert main([*args, *pooled, *tiny_args()]) == 0
    printed = capsys.readouterr().out
    assert "synthetic validation" not in printed
    assert "max of the held-out good images' scores" in printed
    loaded = FOD.load(out, device="cpu")
    assert (loaded.config.bank_selection, loaded.config.nearest_pool) == ("random", 3)
    assert [h.pool for h in loaded.heads] == [3, 3]


def test_the_smallest_fit_validates_on_its_one_held_out_image(generated, tmp_path):
    import shutil

    from fod.api import FOD

    good = sorted((generated / "train" / "good").iterdir())[:3]
    for path in good:
        shutil.copy(path, tmp_path / path.name)
    config = tiny_config(epochs=1, calibration="holdout")
    model = FOD(config, device="cpu", progress=False).fit(tmp_path)
    report = model.stats["validation"]
    assert (report["good_images"], report["anomalies"]) == (1, 64)
    # one good score: the only candidate threshold is that score, the held-out maximum
    assert model.threshold == pytest.approx(model.stats["train_score_max"])
    # cross-fitted (the default here), three folds of one image each
    model = FOD(tiny_config(epochs=1), device="cpu", progress=False).fit(tmp_path)
    report = model.stats["validation"]
    assert (report["good_images"], report["anomalies"], model.stats["folds"]) == (3, 64, 3)
    assert model.threshold <= model.stats["train_score_max"]


def test_held_out_scores_computed_once_serve_validation_and_calibration_alike(generated):
    """fit scores the held-out images once and hands the scores to the validation and the
    calibration: the calibration must give exactly what it gives when it scores them itself,
    and the image scores the validation separates must be the detector's for those images."""
    from fod.api import FOD
    from fod.data import load_batch, training_samples
    from fod.scoring import calibrate
    from fod.training.fit import holdout_split
    from fod.training.validation import synthetic_set, token_scores, validate

    config = tiny_config(calibration="holdout")
    model = FOD(config, device="cpu", progress=False).fit(generated)
    _, samples = training_samples(generated)
    _, held_idx = holdout_split(len(samples), config.holdout, config.seed)
    held_samples = [samples[int(i)] for i in held_idx]
    held = model.features(held_samples)
    size = model.config.image_size
    scores = token_scores(model.levels, model.heads, held)
    assert [tuple(s.shape[:2]) for s in scores] == [(3, 3), (3, 3)]  # residual, nearest, pooled

    def stats(given):
        return calibrate(
            model.levels,
            held,
            size,
            heads=model.heads,
            segmenter=model.segmenter,
            token_scores=given,
        )

    assert model.segmenter is not None
    assert stats(scores) == stats(None)
    images = load_batch([s.image for s in held_samples], size)
    anomalies = synthetic_set(model._backbone(), images, config.seed, config.anomaly_placement)
    anomalous = token_scores(model.levels, model.heads, anomalies.features)
    weights = [h.image_weight.clone() for h in model.heads]
    report = validate(model.heads, anomalies, scores, anomalous, size)
    # the same images and anomalies as the fit's validation: the same weightings and threshold
    assert report["threshold"] == pytest.approx(model.threshold, rel=1e-5)
    for head, w in zip(model.heads, weights, strict=True):
        torch.testing.assert_close(head.image_weight, w, rtol=0, atol=0)
    _, detected = model.score(images)
    _, detected_anomalies = model.score(anomalies.images)
    np.testing.assert_allclose(report["image_scores"]["good"], detected.numpy(), rtol=1e-4)
    np.testing.assert_allclose(
        report["image_scores"]["anomalous"], detected_anomalies.numpy(), rtol=1e-4
    )
    with pytest.raises(ValueError, match="64 anomalies but 3 rows of scores"):
        validate(model.heads, anomalies, scores, scores, size)


def test_fit_scores_each_held_out_image_once(generated, monkeypatch):
    """The validation and the calibration share one scoring of the held-out images: the
    memory banks are searched for the held-out images and the synthetic anomalies once
    (every shrinkage weight tried rescores the Gaussian parts alone), nothing more."""
    import fod.training.shrinkage as shrinkage
    from fod.api import FOD
    from fod.training.crossfit import fold_count, make_folds

    rows: list[int] = []
    scored = shrinkage.out_of_fold_scores

    groups: list[torch.Tensor] = []

    def counted(scorers, given, models, features, device="cpu", outputs=None):
        rows.append(sum(int(g.numel()) for g in given))
        groups[:] = given
        return scored(scorers, given, models, features, device, outputs)

    monkeypatch.setattr(shrinkage, "out_of_fold_scores", counted)
    config = tiny_config(calibration="holdout")
    model = FOD(config, device="cpu", progress=False).fit(generated)
    report = model.stats["validation"]
    assert len(report["shrinkage"]["tried"]) == 5
    assert sum(rows) == report["good_images"] + report["anomalies"]
    # cross-fitted, the out-of-fold scores come from the fit itself: only the anomalies are
    # scored, each once, by the heads of its image's fold
    rows.clear()
    model = FOD(config.replace(calibration="crossfit"), device="cpu", progress=False)
    report = model.fit(generated).stats["validation"]
    assert sum(rows) == report["anomalies"]
    # anomaly i is made on good image i mod n and scored by the heads of that image's fold
    n, m = report["good_images"], report["anomalies"]
    fold_of = torch.empty(n, dtype=torch.long)
    for j, fold in enumerate(make_folds(n, fold_count(n, config.holdout), config.seed)):
        fold_of[fold] = j
    want = [torch.nonzero(fold_of[torch.arange(m) % n] == j).flatten() for j in range(len(groups))]
    assert all(torch.equal(a, b) for a, b in zip(groups, want, strict=True))
    # with more held-out images than the cap allows, the anomalies fall on a seeded subset of
    # them (two each), and each is still scored by the heads of its own image's fold
    import fod.training.validation as validation

    monkeypatch.setattr(validation, "MAX_ANOMALIES", 6)
    rows.clear()
    model = FOD(config.replace(calibration="crossfit"), device="cpu", progress=False)
    report = model.fit(generated).stats["validation"]
    assert (report["anomalies"], report["anomaly_images"], report["good_images"]) == (6, 3, n)
    assert sum(rows) == 6
    sources = validation.anomaly_sources(n, config.seed)
    assert len(sources) == 3
    want = [
        torch.nonzero(fold_of[sources[torch.arange(6) % 3]] == j).flatten()
        for j in range(len(groups))
    ]
    assert all(torch.equal(a, b) for a, b in zip(groups, want, strict=True))


def test_anomaly_sources_keep_every_image_up_to_the_cap_then_a_seeded_subset():
    from fod.training.validation import MAX_ANOMALIES, PER_IMAGE, anomaly_sources

    keep = MAX_ANOMALIES // PER_IMAGE
    assert torch.equal(anomaly_sources(keep, 0), torch.arange(keep))
    assert torch.equal(anomaly_sources(10, 3), torch.arange(10))
    chosen = anomaly_sources(761, 3407)
    assert len(chosen) == keep and len(set(chosen.tolist())) == keep
    assert torch.equal(chosen, chosen.sort().values) and int(chosen.min()) >= 0
    assert int(chosen.max()) < 761
    assert torch.equal(chosen, anomaly_sources(761, 3407))
    assert not torch.equal(chosen, anomaly_sources(761, 1))
