"""The fast path against the direct transcription of the spec: values, gradients, scores.

``FOD_TEST_DEVICE=cuda`` runs them on a GPU (``benchmarks/gpu_check.sh`` does).
"""

from __future__ import annotations

import os

import pytest
import torch

import fod.model.correlation as correlation
from fod.model import FODTransformer, LevelSpec, Variant, fod_objective, token_scores
from fod.model.correlation import (
    correlation_attention,
    plain_correlation,
    plain_correlation_mode,
)
from fod.model.direct import direct_scores, direct_train_step

DEVICE = torch.device(os.environ.get("FOD_TEST_DEVICE", "cpu"))

# The eight rows of the paper's ablation table, plus the output projection and a Rec score.
VARIANTS = {
    "patch": Variant.patch_only(),
    "intra_noent_div": Variant(inter=False, entropy=False, score="div"),
    "intra_div": Variant(inter=False, score="div"),
    "intra_recdiv": Variant(inter=False),
    "inter_mean": Variant(intra=False),
    "inter_coreset": Variant(intra=False, reference="coreset", coreset_size=3),
    "both_div": Variant(score="div"),
    "full": Variant(),
    "full_outproj": Variant(output_projection=True),
    "full_coreset_rec": Variant(reference="coreset", coreset_size=2, score="rec"),
}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# Measured in float64: values agree to 3e-15 and gradients to 3e-9 (the backward pass sums in
# another order); the tolerances leave a margin of about 300 and 30.
VALUE_TOL = 1e-12
GRAD_TOL = 1e-7


def _compare(model: FODTransformer, features: torch.Tensor) -> None:
    variant, spec = model.variant, model.spec
    model.zero_grad()
    out = model(features)
    terms = fod_objective(out, variant)
    terms.total.backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        fast_scores = token_scores(model(features), variant, spec.height, spec.width)
        # The scoring path computes Div only for the branch the score uses.
        scoring_path = model.score(features)

    model.zero_grad()
    loss1, loss2 = direct_train_step(model, features)
    direct_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        slow_scores = direct_scores(model, features)

    assert terms.loss1 == pytest.approx(loss1, rel=VALUE_TOL)
    assert terms.loss2 == pytest.approx(loss2, rel=VALUE_TOL)
    assert fast_grads.keys() == direct_grads.keys()
    # Every trainable parameter takes part in the objective.
    assert set(direct_grads) == {n for n, p in model.named_parameters()}
    # Key biases get a zero gradient in exact arithmetic (softmax ignores a per-row constant):
    # judge those against the scale of the whole gradient instead of their own rounding noise.
    floor = 1e-9 * torch.stack([g.norm() for g in direct_grads.values()]).norm()
    for name, grad in direct_grads.items():
        err = float((fast_grads[name] - grad).norm() / torch.maximum(grad.norm(), floor))
        assert err < GRAD_TOL, f"{name}: relative gradient error {err:.2e}"
    assert _relative_error(fast_scores, slow_scores) < VALUE_TOL
    assert _relative_error(scoring_path, slow_scores) < VALUE_TOL
    atol = VALUE_TOL * slow_scores.abs().max()
    assert torch.allclose(fast_scores, slow_scores, rtol=VALUE_TOL, atol=atol)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("blocks", ["whole", "small"])
def test_fast_path_matches_direct_transcription(name, blocks, monkeypatch):
    """Odd, non-square 5x7 grid, float64; 'small' forces many row blocks per call."""
    if blocks == "small":
        monkeypatch.setattr(correlation, "BLOCK_ELEMENTS", 64)
    torch.manual_seed(0)
    variant = VARIANTS[name]
    spec = LevelSpec(channels=6, height=5, width=7, d_model=16, heads=4, layers=2)
    reference = torch.randn(variant.reference_maps, 6, 5, 7, dtype=torch.float64)
    model = FODTransformer(spec, variant, reference).double().to(DEVICE)
    # Spread the predicted scales over the whole range, tiny to 2 cells.
    for layer in model.layers:
        for att in (layer.intra, layer.inter):
            if att is not None:
                torch.nn.init.normal_(att.sigma.weight, std=0.5)
    features = torch.randn(3, 6, 5, 7, dtype=torch.float64).to(DEVICE)
    _compare(model, features)


def test_realistic_size_matches_direct_transcription():
    """The authors' stride-16 level at input 256: 16x16 tokens, C = 1024, d = 512, 8 heads."""
    torch.manual_seed(1)
    spec = LevelSpec(channels=1024, height=16, width=16, d_model=512, heads=8, layers=3)
    reference = torch.randn(1, 1024, 16, 16, dtype=torch.float64)
    model = FODTransformer(spec, Variant(), reference).double().to(DEVICE)
    features = torch.randn(2, 1024, 16, 16, dtype=torch.float64).to(DEVICE)
    _compare(model, features)


def test_float32_fast_path_close_to_float64_direct():
    """The float32 fast path used in practice stays close to the exact computation."""
    torch.manual_seed(2)
    spec = LevelSpec(channels=8, height=6, width=4, d_model=32, heads=4, layers=2)
    reference = torch.randn(1, 8, 6, 4)
    model32 = FODTransformer(spec, Variant(), reference).to(DEVICE)
    model64 = FODTransformer(spec, Variant(), reference.double()).double().to(DEVICE)
    model64.load_state_dict({k: v.double() for k, v in model32.state_dict().items()})
    features = torch.randn(2, 8, 6, 4).to(DEVICE)
    terms = fod_objective(model32(features), model32.variant)
    terms.total.backward()
    loss1, loss2 = direct_train_step(model64, features.double())
    assert terms.loss1 == pytest.approx(loss1, rel=1e-5)  # measured: 1.5e-7
    assert terms.loss2 == pytest.approx(loss2, rel=1e-5)
    # The gradients too: a wrong minimax sign leaves the losses alone but not these. Each is
    # judged against the scale of all gradients (key biases have none in exact arithmetic).
    grads64 = dict(model64.named_parameters())
    scale = torch.stack([p.grad.norm() for p in grads64.values()]).norm()
    for name, p in model32.named_parameters():
        exact = grads64[name].grad
        err = float((p.grad.double() - exact).norm() / torch.maximum(exact.norm(), 1e-3 * scale))
        assert err < 1e-4, f"{name}: relative gradient error {err:.2e}"  # measured: 4e-6


# ------------------------------------------------------------- the plain correlation path (ONNX)


def _inputs(
    b: int, shared: bool, heads: int, reference_maps: int, dtype: torch.dtype
) -> list[torch.Tensor]:
    """q, k, v, gy, gx of correlation_attention; ``shared``: one key set for the batch."""
    n, h, w, dh = 12, 3, 4, 5
    bk = 1 if shared else b
    keys = reference_maps * h * w
    return [
        torch.randn(b, heads, n, dh, dtype=dtype),
        torch.randn(bk, heads, keys, dh, dtype=dtype),
        torch.randn(bk, heads, keys, dh, dtype=dtype),
        torch.softmax(torch.randn(b, heads, n, h, dtype=dtype), -1),
        torch.softmax(torch.randn(b, heads, n, w, dtype=dtype), -1),
    ]


@pytest.mark.parametrize("reference_maps", [1, 3])
@pytest.mark.parametrize("shared", [True, False])
def test_plain_correlation_equals_fused(
    reference_maps: int, shared: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(correlation, "BLOCK_ELEMENTS", 64)  # several row blocks on the fast path
    torch.manual_seed(reference_maps * 10 + shared)
    # float64: values and gradients (minimax sign included) agree to rounding
    args = [a.requires_grad_() for a in _inputs(2, shared, 2, reference_maps, torch.float64)]
    weights = [torch.randn(2, 2, 12, 5, dtype=torch.float64), torch.randn(2, 2, 12)]
    weights.append(torch.randn(2, 2, 12, dtype=torch.float64))
    fast = correlation_attention(*args, reference_maps=reference_maps, s_div_scale=-1.0)
    plain = plain_correlation(*args, reference_maps=reference_maps, s_div_scale=-1.0)
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    def grads(outputs):
        loss = sum((o * wt).sum() for o, wt in zip(outputs, weights, strict=True))
        return torch.autograd.grad(loss, args)

    for a, b in zip(grads(fast), grads(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)

    # float32, as exported: the switch gives the plain path, and it matches the fast one
    args32 = _inputs(3, shared, 2, reference_maps, torch.float32)
    with torch.no_grad():
        fast = correlation_attention(*args32, reference_maps=reference_maps, with_entropy=False)
        with plain_correlation_mode():
            plain = correlation_attention(
                *args32, reference_maps=reference_maps, with_entropy=False
            )
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not bool(plain[2].any())  # no entropy asked for: zeros, as on the fast path


def test_plain_mode_gives_the_same_token_scores() -> None:
    torch.manual_seed(7)
    spec = LevelSpec(channels=12, height=5, width=7, d_model=16, heads=2, layers=2)
    for variant in (Variant(), Variant(reference="coreset", coreset_size=3, score="div")):
        reference = torch.randn(variant.reference_maps, 12, 5, 7)
        model = FODTransformer(spec, variant, reference).eval()
        features = torch.randn(3, 12, 5, 7)
        with torch.no_grad():
            fast = model.score(features)
            with plain_correlation_mode():
                plain = model.score(features)
            again = model.score(features)
        torch.testing.assert_close(plain, fast, rtol=1e-5, atol=1e-6)
        assert torch.equal(again, fast)  # the mode ends with its block


def test_many_groups_are_taken_a_few_at_a_time_with_the_same_results(monkeypatch):
    """40 groups of 35 rows, blocks of 4 groups: values and gradients as in one plain pass."""
    calls = []
    apply = correlation._FusedCorrelation.apply
    monkeypatch.setattr(
        correlation._FusedCorrelation, "apply", lambda *a: calls.append(a[0].shape) or apply(*a)
    )
    torch.manual_seed(3)
    g, rows, dh = 40, 35, 4
    inputs = [
        torch.randn(g, rows, dh, dtype=torch.float64, device=DEVICE),
        torch.randn(g, rows, dh, dtype=torch.float64, device=DEVICE),
        torch.randn(g, rows, dh, dtype=torch.float64, device=DEVICE),
        torch.softmax(torch.randn(g, rows, 5, dtype=torch.float64, device=DEVICE), -1),
        torch.softmax(torch.randn(g, rows, 7, dtype=torch.float64, device=DEVICE), -1),
    ]
    block = 4 * rows * rows  # per_call = block // (keys * min(rows, MIN_BLOCK_ROWS)) = 4
    results = []
    for fn in (correlation.fused_correlation, correlation.plain_correlation):
        leaves = [t.clone().requires_grad_() for t in inputs]
        extra = {"block_elements": block} if fn is correlation.fused_correlation else {}
        out, div, ent = fn(*leaves, s_div_scale=-1.0, **extra)
        (out.square().sum() + div.sum() + 0.5 * ent.sum()).backward()
        results.append([out, div, ent, *(t.grad for t in leaves)])
    assert calls == [(4, 35, 4)] * 10
    for fused, plain in zip(*results, strict=True):
        assert torch.allclose(fused, plain, rtol=1e-9, atol=1e-12)
