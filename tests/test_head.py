"""The calibrated head: its statistics against numpy loops and brute force, its calibration on
held-out images, the held-out split, and its round trip through a model file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from fod.config import ConfigError, FODConfig, legacy_config, preset_config
from fod.errors import DataError
from fod.model import FODOutput, FODTransformer, LevelSpec, Variant, token_scores
from fod.scoring.head import BANKS, CalibratedHead, check_parts, fit_head
from fod.scoring.normality import (
    COVERAGE_ROUNDS,
    choose_shrinkage,
    fit_gaussian,
    gaussian_from_moments,
    gaussian_log_likelihood,
    gaussian_moments,
    local_average,
    mahalanobis,
    memory_bank,
    nearest_distance,
    shrinkage_weight,
)
from fod.training import fit, holdout_split


def _tokens(n: int, length: int, c: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g, dtype=torch.float64)
    return (torch.randn(n, length, c, generator=g, dtype=torch.float64) @ mix) + 0.5


def test_gaussian_matches_numpy_loop():
    x = _tokens(9, 4, 3)
    for shrink in (0.0, 0.3, 1.0):
        mean, precision = fit_gaussian(x, shrink=shrink, ridge=0.05)
        a = x.numpy()
        covs = [np.cov(a[:, pos, :], rowvar=False) for pos in range(4)]
        shared = sum(covs) / 4
        ridge = 0.05 * np.trace(shared) / 3
        queries = _tokens(2, 4, 3, seed=5)
        got = mahalanobis(queries, mean, precision)
        for pos in range(4):
            cov = (1 - shrink) * covs[pos] + shrink * shared + ridge * np.eye(3)
            np.testing.assert_allclose(mean[pos].numpy(), a[:, pos].mean(0), rtol=1e-12)
            inv = np.linalg.inv(cov)
            for b in range(2):
                d = queries[b, pos].numpy() - a[:, pos].mean(0)
                np.testing.assert_allclose(float(got[b, pos]), np.sqrt(d @ inv @ d), rtol=1e-9)


def test_gaussian_statistics_are_contiguous():
    # a loaded model's buffers are contiguous; the fitted ones must be too, or the matmul
    # kernel (and its rounding) differs between a model and the same model saved and loaded
    mean, precision = fit_gaussian(_tokens(9, 4, 3).float())
    assert mean.is_contiguous() and precision.is_contiguous()


def test_shrinkage_weight_leans_on_shared_covariance_when_images_are_few():
    assert shrinkage_weight(2, 120) == pytest.approx(120 / 121)
    assert shrinkage_weight(601, 120) == pytest.approx(120 / 720)
    assert shrinkage_weight(50, 120) > shrinkage_weight(500, 120)
    with pytest.raises(ValueError, match="at least 2"):
        fit_gaussian(_tokens(1, 4, 3))
    with pytest.raises(ValueError, match="shrink"):
        fit_gaussian(_tokens(3, 4, 3), shrink=1.5)


def test_log_likelihood_matches_scipy():
    from scipy.stats import multivariate_normal

    x = _tokens(12, 3, 4)
    mean, precision = fit_gaussian(x, shrink=0.2)
    queries = _tokens(5, 3, 4, seed=9)
    want = np.mean([
        multivariate_normal(mean[p].numpy(), np.linalg.inv(precision[p].numpy())).logpdf(
            queries[b, p].numpy()
        ) + 0.5 * 4 * np.log(2 * np.pi)
        for b in range(5) for p in range(3)
    ])  # fmt: skip
    assert gaussian_log_likelihood(queries, mean, precision) == pytest.approx(want, rel=1e-9)


def test_shrinkage_is_chosen_by_held_out_likelihood():
    g = torch.Generator().manual_seed(0)
    # positions with very different covariances and many images: their own estimates win
    scales = torch.linspace(0.2, 5.0, 6).reshape(1, 6, 1)
    many = torch.randn(400, 6, 3, generator=g, dtype=torch.float64) * scales
    held = torch.randn(100, 6, 3, generator=g, dtype=torch.float64) * scales
    assert choose_shrinkage(many, held) <= 0.05
    # one covariance for all positions and fewer images than channels: the shared one wins
    few = torch.randn(6, 50, 12, generator=g, dtype=torch.float64)
    held = torch.randn(20, 50, 12, generator=g, dtype=torch.float64)
    assert choose_shrinkage(few, held) >= 0.75
    # the choice is the grid's maximiser of held-out likelihood
    grid = (0.0, 0.5, 1.0)
    lls = [gaussian_log_likelihood(held, *fit_gaussian(few, shrink=a)) for a in grid]
    assert choose_shrinkage(few, held, grid) == grid[int(np.argmax(lls))]


def test_moments_shared_by_several_weights_give_each_weights_gaussian_exactly():
    # choose_shrinkage computes the moments once; its Gaussians must be fit_gaussian's, bit
    # for bit, or a model's scores would depend on how its shrinkage was chosen
    x = _tokens(9, 5, 4).float()
    moments = gaussian_moments(x)
    for shrink in (0.0, 0.35, 1.0, None):
        fast, slow = gaussian_from_moments(moments, shrink), fit_gaussian(x, shrink)
        for got, want in zip(fast, slow, strict=True):
            assert got.dtype == torch.float32 and torch.equal(got, want)
    with pytest.raises(ValueError, match="shrink"):
        gaussian_from_moments(moments, -0.1)


def test_nearest_distance_matches_brute_force():
    bank = _tokens(1, 37, 5, seed=1)[0].float()
    queries = _tokens(3, 11, 5, seed=2).float()
    got = nearest_distance(queries, bank, chunk=7)
    for b in range(3):
        for i in range(11):
            want = min(float(torch.linalg.vector_norm(queries[b, i] - row)) for row in bank)
            assert float(got[b, i]) == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert torch.allclose(nearest_distance(bank[None, :4], bank), torch.zeros(1, 4), atol=1e-2)


@pytest.mark.parametrize("bank_block", [1, 5, 37, 4096])
def test_nearest_distance_in_bank_blocks_matches_brute_force(monkeypatch, bank_block):
    """The running minimum over bank blocks, whatever the block and position sizes, is the
    brute-force nearest distance (blocks of 5 leave a partial last block of 2)."""
    import fod.scoring.normality as normality

    monkeypatch.setattr(normality, "NEAREST_BANK_BLOCK", bank_block)
    bank = _tokens(1, 37, 5, seed=3)[0].float()
    queries = _tokens(2, 13, 5, seed=4).float()
    want = torch.cdist(queries.double(), bank.double()).amin(-1).float()
    for chunk in (None, 1, 4, 13):
        got = nearest_distance(queries, bank, chunk=chunk)
        assert got.shape == (2, 13)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (bank_block, chunk)
    # the default chunk keeps each block of distances within NEAREST_BLOCK numbers
    monkeypatch.setattr(normality, "NEAREST_BLOCK", 2 * min(bank_block, 37))
    assert torch.allclose(nearest_distance(queries, bank), want, rtol=1e-4, atol=1e-4)


def _neighbourhood_means(tokens: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """The local average by loops: each grid cell's mean over the cells of its size x size
    square that lie on the grid."""
    n, _, c = tokens.shape
    grid = tokens.reshape(n, height, width, c)
    out = np.zeros_like(grid)
    r = size // 2
    for i in range(height):
        for j in range(width):
            cells = [
                grid[:, a, b]
                for a in range(i - r, i + r + 1)
                for b in range(j - r, j + r + 1)
                if 0 <= a < height and 0 <= b < width
            ]
            out[:, i, j] = np.mean(cells, axis=0)
    return out.reshape(n, height * width, c)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_local_average_matches_a_loop_over_each_neighbourhood(size):
    tokens = _tokens(2, 3 * 4, 5, seed=7).float()
    got = local_average(tokens, 3, 4, size)
    want = _neighbourhood_means(tokens.numpy(), 3, 4, size)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    for bad in (0, 2):
        with pytest.raises(ValueError, match="odd and >= 1"):
            local_average(tokens, 3, 4, bad)
    with pytest.raises(ValueError, match="do not fill a 4 x 4 grid"):
        local_average(tokens, 4, 4, 3)


def test_the_pooled_nearest_part_searches_local_averages_in_a_bank_of_local_averages():
    """With pool 3 the bank holds the fit images' averaged tokens and a token's score is the
    distance of its own average to the nearest of them (brute force over the bank)."""
    model, train, held = _level()
    head = fit_head(["nearest"], model, train, held, 1000, pool=3)
    fit_tokens = _neighbourhood_means(train.flatten(2).transpose(1, 2).numpy(), 3, 4, 3)
    np.testing.assert_allclose(head.bank.numpy(), fit_tokens.reshape(-1, 6), rtol=1e-5, atol=1e-6)
    queries = _neighbourhood_means(held.flatten(2).transpose(1, 2).numpy(), 3, 4, 3)
    want = np.linalg.norm(queries[:, :, None] - fit_tokens.reshape(1, 1, -1, 6), axis=-1).min(-1)
    tokens = held.flatten(2).transpose(1, 2)
    with torch.no_grad():
        (raw,) = head.part_scores(FODOutput(tokens, tokens))
    np.testing.assert_allclose(raw.numpy(), want, rtol=1e-4, atol=1e-4)
    plain = fit_head(["nearest"], model, train, held, 1000)
    assert not torch.allclose(plain.part_scores(FODOutput(tokens, tokens))[0], raw)
    again = CalibratedHead.from_state_dict(head.state_dict(), ["nearest"], model.variant, 3, 4, 3)
    assert torch.equal(again(FODOutput(tokens, tokens)), head(FODOutput(tokens, tokens)))


@pytest.mark.parametrize(("part", "side"), [("pooled", 3), ("wide", 7)])
def test_an_averaged_part_searches_its_averages_beside_the_token_and_stays_out_of_the_image(
    part, side
):
    """The pooled (wide) part's bank holds the fit images' 3 x 3 (7 x 7) averages (its own
    size), its score is the distance of a token's average to the nearest of them (brute
    force), it adds to the heat map beside the nearest part, and its image weight is 0."""
    from fod.scoring.detector import weighted_image_scores

    model, train, held = _level()
    head = fit_head(["nearest", part], model, train, held, 1000, pooled_bank_size=1000)
    assert head.side(part) == side and head.parts == ("nearest", part)
    fit_tokens = train.flatten(2).transpose(1, 2)
    averages = _neighbourhood_means(fit_tokens.numpy(), 3, 4, side).reshape(-1, 6)
    bank = getattr(head, BANKS[part])
    np.testing.assert_allclose(bank.numpy(), averages, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.bank.numpy(), fit_tokens.reshape(-1, 6).numpy())
    tokens = held.flatten(2).transpose(1, 2)
    queries = _neighbourhood_means(tokens.numpy(), 3, 4, side)
    want = np.linalg.norm(queries[:, :, None] - averages.reshape(1, 1, -1, 6), axis=-1).min(-1)
    out = FODOutput(tokens, tokens)
    with torch.no_grad():
        raw, averaged = head.part_scores(out)
        z = head.standardised(out)
    np.testing.assert_allclose(averaged.numpy(), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(raw.numpy(), nearest_distance(tokens, head.bank).numpy())
    assert torch.allclose(head(out), z.sum(1))  # the heat map sums both
    assert head.image_weight.tolist() == [[1.0, 0.0]]
    # the image score ignores the averaged part: any values there give the same scores
    noisy = z.clone()
    noisy[:, 1] = torch.randn_like(noisy[:, 1]) * 100
    weights = [head.image_weight]
    assert torch.equal(
        weighted_image_scores([z], weights, 16), weighted_image_scores([noisy], weights, 16)
    )
    small = fit_head(["nearest", part], model, train, held, 1000, pooled_bank_size=7)
    assert getattr(small, BANKS[part]).shape == (7, 6) and small.bank.shape == (120, 6)
    again = CalibratedHead.from_state_dict(
        small.state_dict(), ["nearest", part], model.variant, 3, 4
    )
    assert torch.equal(again(out), small(out))
    with pytest.raises(ValueError, match="leave nothing for the image score"):
        fit_head([part], model, train, held, 1000)
    with pytest.raises(ConfigError, match=rf"\['{part}'\] leave nothing .* for the heat map only"):
        FODConfig(head_parts=(part,))


def test_the_three_grains_sum_in_the_heat_map_and_share_the_averaged_bank_size():
    """nearest, pooled and wide together: three banks (token, 3 x 3 and 7 x 7 averages), the
    map parts' image weights 0, and a state dict that loads back to the same scores."""
    model, train, held = _level()
    parts = ["residual", "nearest", "pooled", "wide"]
    head = fit_head(parts, model, train, held, 50, pooled_bank_size=20)
    assert head.bank.shape == (50, 6) and head.pooled_bank.shape == head.wide_bank.shape == (20, 6)
    assert not torch.allclose(head.pooled_bank, head.wide_bank)
    assert head.image_weight.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    tokens = held.flatten(2).transpose(1, 2)
    out = FODOutput(tokens, tokens * 0.9)
    again = CalibratedHead.from_state_dict(head.state_dict(), parts, model.variant, 3, 4)
    assert torch.equal(again(out), head(out))
    with pytest.raises(ConfigError, match=r"\['pooled', 'wide'\] leave nothing"):
        FODConfig(head_parts=("pooled", "wide"))


def test_memory_bank_is_a_seeded_subsample_without_repeats():
    x = torch.arange(60, dtype=torch.float32).reshape(3, 10, 2)
    bank = memory_bank(x, 7, seed=3, selection="random")
    assert bank.shape == (7, 2)
    assert len({tuple(r) for r in bank.tolist()}) == 7
    rows = {tuple(r) for r in x.reshape(-1, 2).tolist()}
    assert all(tuple(r) in rows for r in bank.tolist())
    assert torch.equal(bank, memory_bank(x, 7, seed=3, selection="random"))
    assert memory_bank(x, 100).shape == (30, 2)
    assert memory_bank(x, 1).shape == (1, 2)  # a coverage bank of one: the random token
    assert torch.equal(memory_bank(x, 1, seed=3), memory_bank(x, 1, 3, "random"))
    with pytest.raises(ValueError, match="bank selection must be one of coverage, random"):
        memory_bank(x, 7, selection="coreset")


def _row_indices(bank: torch.Tensor, flat: np.ndarray) -> list[int]:
    """Index in ``flat`` of each bank row (rows of random floats are unique)."""
    out = []
    for row in bank.numpy():
        hits = np.flatnonzero(np.all(np.isclose(flat, row, rtol=0, atol=1e-6), axis=1))
        assert hits.size == 1
        out.append(int(hits[0]))
    return out


def test_coverage_bank_adds_the_farthest_tokens_round_by_round():
    x = _tokens(4, 25, 3, seed=5).float()
    flat = x.reshape(-1, 3).numpy().astype(np.float64)
    size = 40
    bank = memory_bank(x, size, seed=2)
    index = _row_indices(bank, flat)
    assert len(set(index)) == size
    # the first half is the random bank of half the size
    half = size // 2
    assert index[:half] == _row_indices(memory_bank(x, half, 2, "random"), flat)
    # then each round adds the tokens farthest (brute force) from the bank so far
    per_round = -(-(size - half) // COVERAGE_ROUNDS)
    held = index[:half]
    while len(held) < size:
        d = np.sqrt(((flat[:, None, :] - flat[held][None]) ** 2).sum(-1)).min(1)
        d[held] = -np.inf
        k = min(per_round, size - len(held))
        want = set(np.argsort(-d, kind="stable")[:k].tolist())
        assert set(index[len(held) : len(held) + k]) == want
        held = index[: len(held) + k]
    assert torch.equal(bank, memory_bank(x, size, seed=2))


def test_coverage_bank_keeps_rare_good_tokens_a_random_bank_misses():
    g = torch.Generator().manual_seed(0)
    dense = 0.1 * torch.randn(1, 400, 4, generator=g)
    rare = 10.0 + torch.randn(1, 6, 4, generator=g)  # 1.5% of the tokens, far from the rest
    tokens = torch.cat([dense, rare], dim=1)
    covered = memory_bank(tokens, 24, seed=1)
    drawn = memory_bank(tokens, 24, seed=1, selection="random")
    assert int((covered[:, 0] > 5).sum()) == 6
    assert int((drawn[:, 0] > 5).sum()) < 6
    far_covered = nearest_distance(tokens, covered).max()
    far_drawn = nearest_distance(tokens, drawn).max()
    assert far_covered < far_drawn and far_covered < 1.0


def test_check_parts_orders_and_refuses():
    assert check_parts(["nearest", "residual"]) == ("residual", "nearest")
    for bad in ([], ["nearest", "nearest"], ["cosine"]):
        with pytest.raises(ValueError, match="head parts"):
            check_parts(bad)


def _level(seed: int = 0) -> tuple[FODTransformer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    spec = LevelSpec(channels=6, height=3, width=4, d_model=8, heads=2, layers=1)
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(10, 6, 3, 4, generator=g)
    held = torch.randn(5, 6, 3, 4, generator=g)
    model = FODTransformer(spec, Variant(), reference=train.mean(0, keepdim=True)).eval()
    return model, train, held


def test_fit_head_standardises_each_part_on_the_held_out_images():
    model, train, held = _level()
    head = fit_head(["residual", "feature", "nearest", "paper"], model, train, held, 25)
    with torch.no_grad():
        out = model(held, div_branches=frozenset({"inter"}), entropy=False)
        raw = head.part_scores(out)
        for i, score in enumerate(raw):
            assert float(head.center[i]) == pytest.approx(float(score.mean()), rel=1e-5)
            assert float(head.scale[i]) == pytest.approx(float(score.std()), rel=1e-5)
        total = head(out)
    # the held-out images' summed, standardised score has mean zero
    assert total.shape == (5, 3, 4)
    assert float(total.mean()) == pytest.approx(0.0, abs=1e-4)
    # each part is what its definition says
    tokens = train.flatten(2).transpose(1, 2)
    recon = model(train, div_branches=frozenset(), entropy=False).reconstruction.detach()
    mean, precision = fit_gaussian(tokens - recon, shrink=head.shrinkage["residual"])
    assert torch.allclose(head.residual_mean, mean, atol=1e-5)
    assert torch.allclose(head.residual_precision, precision, rtol=1e-4, atol=1e-4)
    paper = token_scores(out, model.variant, 3, 4).flatten(1)
    assert torch.allclose(raw[3], paper)
    assert torch.equal(head.bank, memory_bank(tokens.float(), 25, 0))
    drawn = fit_head(["nearest"], model, train, held, 25, bank_selection="random")
    assert torch.equal(drawn.bank, memory_bank(tokens.float(), 25, 0, "random"))


def test_head_without_model_parts_ignores_the_reconstruction():
    model, train, held = _level()
    head = fit_head(["feature", "nearest"], model, train, held, 1000)
    assert not head.needs_model
    tokens = held.flatten(2).transpose(1, 2)
    a = head(FODOutput(tokens, tokens))
    b = head(FODOutput(tokens, torch.zeros_like(tokens)))
    assert torch.equal(a, b)
    assert head.bank.shape == (120, 6)  # all 10 x 12 training tokens


def test_head_state_dict_round_trip():
    model, train, held = _level()
    head = fit_head(["residual", "nearest"], model, train, held, 30)
    again = CalibratedHead.from_state_dict(
        head.state_dict(), ["nearest", "residual"], model.variant, 3, 4
    )
    out = model(held, div_branches=frozenset(), entropy=False)
    assert torch.equal(head(out), again(out))


def test_holdout_split_is_seeded_disjoint_and_complete():
    fit_idx, held = holdout_split(50, 0.2, 3407)
    assert len(held) == 10 and len(fit_idx) == 40
    assert sorted(fit_idx.tolist() + held.tolist()) == list(range(50))
    assert torch.equal(held, holdout_split(50, 0.2, 3407)[1])
    assert not torch.equal(held, holdout_split(50, 0.2, 1)[1])
    assert len(holdout_split(3, 0.2, 0)[1]) == 1
    assert len(holdout_split(7, 0.0, 0)[1]) == 0
    with pytest.raises(DataError, match="at least 3"):
        holdout_split(2, 0.2, 0)


def test_fit_trains_on_the_fit_split_only_and_heads_score_held_out_images():
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(12, 6, 4, 4, generator=g), torch.randn(12, 10, 2, 2, generator=g)]
    config = tiny_config(d_model=(8, 8), epochs=1, holdout=0.25, bank_size=40)
    config = config.replace(calibration="holdout")  # 12 images would be cross-fitted
    result = fit(config, features, progress=False)
    fit_idx, held = holdout_split(12, 0.25, config.seed)
    assert torch.equal(result.fit_indices, fit_idx)
    assert torch.equal(result.holdout[0], features[0][held])
    # the inter reference is the mean of the fit split, not of all images
    ref = result.models[0].reference
    assert torch.allclose(ref, features[0][fit_idx].mean(0, keepdim=True), atol=1e-6)
    assert result.heads is not None and len(result.heads) == 2
    paper = fit(
        FODConfig.paper(
            **{
                k: getattr(config, k)
                for k in ("backbone", "image_size", "d_model", "heads", "num_layers", "batch_size")
            },
            epochs=1,
        ),
        features,
        progress=False,
    )
    assert paper.heads is None and paper.holdout == []
    assert torch.allclose(paper.models[0].reference, features[0].mean(0, keepdim=True), atol=1e-6)


def test_presets_and_legacy_configs():
    paper = preset_config("paper")
    assert (paper.d_model, paper.heads, paper.num_layers) == ((256, 512), 8, 3)
    assert (paper.epochs, paper.batch_size, paper.lr, paper.head) == (100, 1, 1e-4, "paper")
    assert paper.holdout == 0.0 and paper.seed == 3407
    assert FODConfig().head == "calibrated"
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("fast")
    with pytest.raises(ConfigError, match="held-out"):
        FODConfig(holdout=0.0)
    with pytest.raises(ConfigError, match="head_parts"):
        FODConfig(head_parts=("nearest", "cosine"))
    old = FODConfig.paper().to_dict()
    for key in ("head", "head_parts", "holdout", "bank_size", "bank_selection", "nearest_pool"):
        old.pop(key)
    assert FODConfig.from_dict(legacy_config(old)).head == "paper"
    # model files from before the coverage bank drew the bank at random
    assert FODConfig.from_dict(legacy_config(old)).bank_selection == "random"
    assert FODConfig().bank_selection == "coverage"
    with pytest.raises(ConfigError, match="bank_selection must be one of coverage, random"):
        FODConfig(bank_selection="kcenter")
    # model files from before the local average searched each token alone
    assert FODConfig.from_dict(legacy_config(old)).nearest_pool == 1
    with pytest.raises(ConfigError, match="nearest_pool must be odd"):
        FODConfig(nearest_pool=4)
    with pytest.raises(ConfigError, match="nearest_pool must be an integer >= 1"):
        FODConfig(nearest_pool=0)


@pytest.mark.parametrize("pool", [1, 3])
def test_model_file_round_trip_keeps_the_heads(tmp_path, pool):
    from fod.backbone import create_backbone
    from fod.scoring import Detector
    from fod.training import load_model_file, save_model_file

    config = tiny_config(d_model=(8, 8), epochs=1, bank_size=64, segmenter=False, nearest_pool=pool)
    backbone = create_backbone(config.backbone)
    images = torch.rand(10, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = backbone(images)
    result = fit(config, features, progress=False)
    path = tmp_path / "m.pt"
    save_model_file(path, config, backbone, result.models, threshold=1.0, heads=result.heads)
    again, _, levels, meta = load_model_file(path)
    assert again == config and meta["heads"] is not None
    assert [h.pool for h in meta["heads"]] == [pool, pool]
    before = Detector(backbone, result.models, 64, heads=result.heads)(images[:3])
    after = Detector(backbone, levels, 64, heads=meta["heads"])(images[:3])
    assert torch.allclose(before[0], after[0]) and torch.allclose(before[1], after[1])
    with pytest.raises(ValueError, match="heads given"):
        save_model_file(path, config, backbone, result.models, threshold=1.0)


def test_cli_names_the_flags_when_the_head_has_nothing_held_out(generated, tmp_path, capsys):
    from fod.cli.main import main

    out = tmp_path / "m.pt"
    rc = main(["train", str(generated), "--out", str(out), "--preset", "paper", "--head",
               "calibrated", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "--holdout 0.2" in err and "--head paper" in err
    assert "holdout=0.2" not in err and not out.exists()
