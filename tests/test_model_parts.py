"""Each formula of the model against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch

import fod.model.correlation as correlation
from fod.model import FODTransformer, LevelSpec, Variant, coreset_reference, mean_reference
from fod.model.correlation import fused_correlation
from fod.model.positional import sincos_2d
from fod.model.target import separable_target, sigma_from_raw


def _plain_correlation(q, k, v, gy, gx, reference_maps, eps=1e-4):
    """Autograd composition of the formulas with the full target matrix."""
    s = torch.softmax(q @ k.transpose(1, 2), dim=-1)
    t = (gy.unsqueeze(-1) * gx.unsqueeze(-2)).flatten(-2) / reference_maps
    t = t.repeat(1, 1, reference_maps)
    div = ((t - s) * (torch.log(t + eps) - torch.log(s + eps))).sum(-1)
    ent = -(s * torch.log(s + eps)).sum(-1)
    return s @ v, div, ent


@pytest.mark.parametrize("reference_maps", [1, 3])
@pytest.mark.parametrize("block", [64, 1 << 19])
def test_fused_correlation_values_and_gradients(reference_maps, block, monkeypatch):
    monkeypatch.setattr(correlation, "BLOCK_ELEMENTS", block)
    torch.manual_seed(0)
    g, r, h, w, dh = 3, 11, 4, 5, 6
    keys = reference_maps * h * w
    q = torch.randn(g, r, dh, dtype=torch.float64, requires_grad=True)
    k = torch.randn(g, keys, dh, dtype=torch.float64, requires_grad=True)
    v = torch.randn(g, keys, dh, dtype=torch.float64, requires_grad=True)
    # Free (not normalised) target factors: the gradient must be exact for any input.
    gy = torch.rand(g, r, h, dtype=torch.float64).requires_grad_()
    gx = torch.rand(g, r, w, dtype=torch.float64).requires_grad_()
    weights = [torch.randn(g, r, dh, dtype=torch.float64), torch.randn(g, r), torch.randn(g, r)]
    weights = [wt.double() for wt in weights]

    fast = fused_correlation(q, k, v, gy, gx, reference_maps)
    plain = _plain_correlation(q, k, v, gy, gx, reference_maps)
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    def grads(outputs):
        loss = sum((o * wt).sum() for o, wt in zip(outputs, weights, strict=True))
        return torch.autograd.grad(loss, (q, k, v, gy, gx))

    for a, b in zip(grads(fast), grads(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_minimax_scale_reverses_only_the_attention_side():
    torch.manual_seed(1)
    g, r, h, w, dh = 2, 6, 2, 3, 4
    args = [torch.randn(g, r, dh), torch.randn(g, 6, dh), torch.randn(g, 6, dh)]
    args += [torch.softmax(torch.randn(g, r, h), -1), torch.softmax(torch.randn(g, r, w), -1)]
    args = [a.double().requires_grad_() for a in args]
    plain = torch.autograd.grad(fused_correlation(*args)[1].sum(), args)
    reversed_ = torch.autograd.grad(fused_correlation(*args, s_div_scale=-1.0)[1].sum(), args)
    for i in (0, 1):  # q and k reach Div only through S
        torch.testing.assert_close(reversed_[i], -plain[i])
    for i in (3, 4):  # the target side keeps its sign
        torch.testing.assert_close(reversed_[i], plain[i])


def test_separable_target_is_the_normalised_2d_rbf():
    torch.manual_seed(2)
    h, w = 4, 6
    sigma = sigma_from_raw(torch.randn(2, h * w, 2, dtype=torch.float64))
    gy, gx = separable_target(sigma, h, w)
    t = (gy.unsqueeze(-1) * gx.unsqueeze(-2)).flatten(-2)
    for b in range(2):
        for q in range(h * w):
            i, j = divmod(q, w)
            sy, sx = sigma[b, q]
            full = torch.tensor(
                [
                    math.exp(-((i - a) ** 2) / (2 * sy**2) - (j - c) ** 2 / (2 * sx**2))
                    for a in range(h)
                    for c in range(w)
                ],
                dtype=torch.float64,
            )
            torch.testing.assert_close(t[b, q], full / full.sum())


def test_sigma_mapping_range():
    """3^(sigmoid(5 s) + 1e-5) - 1: the ends fix the range, +-0.3 (where the sigmoid is steep)
    the slope of 5."""
    raw = torch.tensor([-100.0, -0.3, 0.0, 0.3, 100.0], dtype=torch.float64)
    sigma = sigma_from_raw(raw)

    def expected(s: float) -> float:
        return 3 ** (1 / (1 + math.exp(-5 * s)) + 1e-5) - 1

    assert sigma[0] == pytest.approx(3**1e-5 - 1, rel=1e-9)
    assert sigma[2] == pytest.approx(3 ** (0.5 + 1e-5) - 1, rel=1e-12)
    assert sigma[4] == pytest.approx(3 ** (1 + 1e-5) - 1, rel=1e-12)
    for i in (1, 3):
        assert sigma[i] == pytest.approx(expected(float(raw[i])), rel=1e-12)
    # Worked out by hand: a slope of 1 would give 0.5961 and 0.8797.
    assert float(sigma[1]) == pytest.approx(0.22192, abs=1e-5)
    assert float(sigma[3]) == pytest.approx(1.45520, abs=1e-5)


def test_position_code_columns_then_rows():
    """Every token of a 3 x 5 grid against the formula written out: channels [0, dim/2) code the
    column as dim/4 sines then dim/4 cosines at frequencies 10000^(-4k/dim), the rest the row."""
    height, width, dim = 3, 5, 16
    code = sincos_2d(height, width, dim)
    assert code.shape == (height * width, dim) and code.dtype == torch.float32
    quarter = dim // 4
    freqs = [10000.0 ** (-4.0 * k / dim) for k in range(quarter)]
    for token in range(height * width):
        row, col = divmod(token, width)  # row-major flattening
        expected = []
        for p in (col, row):
            expected += [math.sin(p * f) for f in freqs] + [math.cos(p * f) for f in freqs]
        torch.testing.assert_close(code[token], torch.tensor(expected), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 2, 6)


def test_eps_is_the_spec_value_where_it_decides():
    """EPS = 1e-4 inside the logarithms (spec section 5). The fast path and direct.py share it,
    so the equivalence tests cannot see it change; here a query attends to one key alone, so
    log(S + eps) of the other keys is log(eps) and Div and Ent hang on its value."""
    assert correlation.EPS == 1e-4
    h, w = 2, 3
    q = torch.tensor([[[40.0, 0.0]]], dtype=torch.float64)  # (G=1, R=1, dh=2)
    k = torch.zeros(1, h * w, 2, dtype=torch.float64)
    k[0, 0, 0] = 1.0  # S = softmax([40, 0, 0, 0, 0, 0]): about 1 on key 0, 4e-18 elsewhere
    v = torch.randn(1, h * w, 4, dtype=torch.float64)
    gy = torch.tensor([[[0.75, 0.25]]], dtype=torch.float64)
    gx = torch.tensor([[[0.5, 0.3, 0.2]]], dtype=torch.float64)
    _, div, ent = fused_correlation(q, k, v, gy, gx)
    logits = [40.0] + [0.0] * (h * w - 1)
    z = sum(math.exp(x) for x in logits)
    s = [math.exp(x) / z for x in logits]
    t = [a * b for a in (0.75, 0.25) for b in (0.5, 0.3, 0.2)]
    eps = 1e-4
    div_expected = sum(
        (ti - si) * (math.log(ti + eps) - math.log(si + eps)) for ti, si in zip(t, s, strict=True)
    )
    ent_expected = -sum(si * math.log(si + eps) for si in s)
    assert float(div[0, 0]) == pytest.approx(div_expected, rel=1e-12)
    assert float(ent[0, 0]) == pytest.approx(ent_expected, rel=1e-9)
    assert div_expected > 5.0  # log(eps) dominates: eps = 1e-5 would add about log(10) x 0.7


def test_references():
    torch.manual_seed(3)
    feats = torch.randn(9, 4, 3, 5)
    torch.testing.assert_close(mean_reference(feats)[0], feats.mean(0))
    # Three far-apart clusters: a 3-coreset takes one map from each.
    feats = torch.cat(
        [torch.full((3, 4, 3, 5), c) + 0.01 * torch.randn(3, 4, 3, 5) for c in (0, 5, 10)]
    )
    picked = coreset_reference(feats, 3)
    assert sorted(round(float(m.mean())) for m in picked) == [0, 5, 10]


def test_any_grid_and_channel_count():
    for h, w, c in [(1, 1, 3), (2, 9, 5), (7, 3, 17)]:
        spec = LevelSpec(channels=c, height=h, width=w, d_model=8, heads=2, layers=1)
        model = FODTransformer(spec, Variant(), torch.randn(1, c, h, w))
        out = model(torch.randn(2, c, h, w))
        assert out.reconstruction.shape == (2, h * w, c)
        assert torch.isfinite(out.div_inter).all()


def test_wrong_feature_shape_is_refused():
    spec = LevelSpec(channels=4, height=3, width=5, d_model=8, heads=2, layers=1)
    model = FODTransformer(spec, Variant(), torch.randn(1, 4, 3, 5))
    with pytest.raises(ValueError, match=r"expects \(B, 4, 3, 5\)"):
        model(torch.randn(1, 4, 5, 3))
    with pytest.raises(ValueError, match="reference has shape"):
        FODTransformer(spec, Variant(), torch.randn(1, 4, 5, 3))


def test_variant_validation():
    with pytest.raises(ValueError, match="needs a correlation branch"):
        Variant(intra=False, inter=False, score="rec_div")
    with pytest.raises(ValueError, match="score must be one of"):
        Variant(score="max")
    with pytest.raises(ValueError, match="divisible by heads"):
        LevelSpec(channels=4, height=3, width=3, d_model=12, heads=8)
