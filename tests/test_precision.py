"""--precision: bf16 / fp16 autocast of the transformers, with the correlation kernel in float32.

CPU autocast runs both 16-bit types, so everything here runs without a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from fod.config import ConfigError, FODConfig
from fod.model.correlation import correlation_attention, plain_correlation
from fod.precision import autocast, check_precision
from fod.training import train

CPU = torch.device("cpu")


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, 12, 4, generator=g) for _ in range(3))
    gy = torch.softmax(torch.randn(2, 2, 12, 3, generator=g), -1)
    gx = torch.softmax(torch.randn(2, 2, 12, 4, generator=g), -1)
    return q, k, v, gy, gx


def test_unknown_precision_is_refused_with_the_choices() -> None:
    assert check_precision(" BF16 ") == "bf16"
    with pytest.raises(ConfigError, match=r"unknown precision 'fp8'; use one of fp32, bf16, fp16"):
        check_precision("fp8")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_correlation_kernel_stays_float32_under_autocast(precision: str) -> None:
    """Inside autocast the kernel gives what it gives in float32 on the same (16-bit) inputs,
    while an ordinary matmul in the same region runs in the 16-bit type."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    q, k, v, gy, gx = _inputs()
    q16, k16, v16 = (t.to(dtype) for t in (q, k, v))  # what linear layers hand over
    with autocast(CPU, precision):
        assert (q @ k.transpose(-1, -2)).dtype == dtype
        out, div, ent = correlation_attention(q16, k16, v16, gy, gx)
    assert out.dtype == div.dtype == ent.dtype == torch.float32
    ref = correlation_attention(*(t.float() for t in (q16, k16, v16)), gy, gx)
    for got, want in zip((out, div, ent), ref, strict=True):
        assert torch.equal(got, want)
    # and the float32 result is that of the plain transcription, not of a 16-bit softmax
    plain = plain_correlation(*(t.float() for t in (q16, k16, v16)), gy, gx)
    assert torch.allclose(div, plain[1], rtol=1e-5, atol=1e-6)


def test_gradients_flow_through_the_kernel_under_autocast() -> None:
    q, k, v, gy, gx = (t.requires_grad_() for t in _inputs(1))
    with autocast(CPU, "bf16"):
        out, div, ent = correlation_attention(q, k, v, gy, gx)
    (out.sum() + div.sum() - ent.sum()).backward()
    ref = [t.detach().clone().requires_grad_() for t in (q, k, v, gy, gx)]
    o2, d2, e2 = correlation_attention(*ref)
    (o2.sum() + d2.sum() - e2.sum()).backward()
    for a, b in zip((q, k, v, gy, gx), ref, strict=True):
        assert a.grad.dtype == torch.float32
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def _features() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return [torch.randn(6, 8, 4, 4, generator=g), torch.randn(6, 12, 2, 2, generator=g)]


CONFIG = FODConfig(d_model=(16, 16), heads=2, num_layers=1, epochs=2, batch_size=3, seed=2, lr=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_tracks_float32(precision: str) -> None:
    """Same seed and data: the 16-bit run's losses stay within a few percent of float32's,
    its weights stay float32, and they differ from float32's (autocast did act)."""
    full = train(CONFIG, _features(), progress=False)
    mixed = train(CONFIG, _features(), progress=False, precision=precision)
    for h32, h16 in zip(full.history, mixed.history, strict=True):
        for key in ("loss1", "loss2", "rec"):
            assert math.isfinite(h16[key])
            assert h16[key] == pytest.approx(h32[key], rel=0.05, abs=0.02)
    changed = False
    for m32, m16 in zip(full.models, mixed.models, strict=True):
        for (name, p32), p16 in zip(m32.named_parameters(), m16.parameters(), strict=True):
            assert p16.dtype == torch.float32, name
            assert torch.isfinite(p16).all(), name
            changed |= not torch.equal(p32, p16)
    assert changed


def test_precision_is_not_part_of_the_state(tmp_path) -> None:
    """A bf16 run may resume in fp32 (precision is a runtime choice)."""
    state = tmp_path / "state.pt"
    one = FODConfig(**{**CONFIG.to_dict(), "epochs": 1})
    train(one, _features(), state_path=state, progress=False, precision="bf16")
    resumed = train(CONFIG, _features(), state_path=state, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
