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


def _plain_correlation(q, k, v, gy, gx, maps, eps=1e-4):
    """Autograd composition of the formulas with the full target matrix."""
    s = torch.softmax(q @ k.transpose(1, 2), dim=-1)
    t = (gy.unsqueeze(-1) * gx.unsqueeze(-2)).flatten(-2) / maps
    t = t.repeat(1, 1, maps)
    div = ((t - s) * (torch.log(t + eps) - torch.log(s + eps))).sum(-1)
    ent = -(s * torch.log(s + eps)).sum(-1)
    return s @ v, div, ent


@pytest.mark.parametrize("maps", [1, 3])
@pytest.mark.parametrize("block", [64, 1 << 19])
def test_fused_correlation_values_and_gradients(maps, block, monkeypatch):
    monkeypatch.setattr(correlation, "BLOCK_ELEMENTS", block)
    torch.manual_seed(0)
    g, r, h, w, dh = 3, 11, 4, 5, 6
    keys = maps * h * w
    q = torch.randn(g, r, dh, dtype=torch.float64, requires_grad=True)
    k = torch.randn(g, keys, dh, dtype=torch.float64, requires_grad=True)
    v = torch.randn(g, keys, dh, dtype=torch.float64, requires_grad=True)
    # Free (not normalised) target factors: the gradient must be exact for any input.
    gy = torch.rand(g, r, h, dtype=torch.float64).requires_grad_()
    gx = torch.rand(g, r, w, dtype=torch.float64).requires_grad_()
    weights = [torch.randn(g, r, dh, dtype=torch.float64), torch.randn(g, r), torch.randn(g, r)]
    weights = [wt.double() for wt in weights]

    fast = fused_correlation(q, k, v, gy, gx, maps)
    plain = _plain_correlation(q, k, v, gy, gx, maps)
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
    raw = torch.tensor([-100.0, 0.0, 100.0], dtype=torch.float64)
    sigma = sigma_from_raw(raw)
    assert sigma[0] == pytest.approx(3**1e-5 - 1, rel=1e-9)
    assert sigma[1] == pytest.approx(3 ** (0.5 + 1e-5) - 1, rel=1e-12)
    assert sigma[2] == pytest.approx(3 ** (1 + 1e-5) - 1, rel=1e-12)


def test_position_code_columns_then_rows():
    code = sincos_2d(3, 5, 8)
    assert code.shape == (15, 8)
    # Token (row 2, col 4) is index 14: first half encodes column 4, second half row 2.
    col, row = 4.0, 2.0
    expected = [math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100)]
    expected += [math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100)]
    torch.testing.assert_close(code[14], torch.tensor(expected), rtol=1e-6, atol=1e-6)


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
