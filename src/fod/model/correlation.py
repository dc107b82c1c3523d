"""Fused correlation attention: softmax attention, target divergence and entropy in row blocks.

This is the fast path of spec sections 4 and 5. A direct implementation materialises, for every
layer and branch, several ``batch x heads x L x L`` tensors (S, T, their logarithms, the two KL
terms) and keeps them for the backward pass; on a CPU those passes over memory dominate the run
time. Here the query rows are walked in blocks small enough to stay in cache; each block computes
S, the separable target T, the symmetric KL and the entropy, and only per-row results and the
small inputs are kept. The backward pass recomputes a block's S and T and applies the closed-form
derivatives:

    dDiv/dS = -(log(T+eps) - log(S+eps)) - (T - S) / (S + eps)
    dDiv/dT =  (log(T+eps) - log(S+eps)) + (T - S) / (T + eps)
    dEnt/dS = -log(S+eps) - S / (S + eps)

Terms constant along a row vanish in the softmax backward and are left out of dS.
``s_div_scale = -1`` reverses the gradient of Div on the attention side only: the minimax of
spec section 5 in one backward pass (the target side keeps its sign).

>>> q = torch.randn(8, 35, 4); k = torch.randn(8, 35, 4); v = torch.randn(8, 35, 4)
>>> gy = torch.softmax(torch.randn(8, 35, 5), -1); gx = torch.softmax(torch.randn(8, 35, 7), -1)
>>> out, div, ent = fused_correlation(q, k, v, gy, gx)
>>> out.shape, div.shape, ent.shape
(torch.Size([8, 35, 4]), torch.Size([8, 35]), torch.Size([8, 35]))
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

EPS = 1e-4
# Elements of one (groups x rows x keys) block; about 2 MB in float32, so that the dozen
# temporaries of a block stay in the last-level cache.
BLOCK_ELEMENTS = 1 << 19
# Fewest query rows a block should hold. With many groups (the intra branch of a large batch:
# batch x heads groups) a block would hold a few rows of every group, and each block's update
# of dK and dV in the backward pass would sweep the keys of all groups: the groups are then
# taken a few at a time, so a batch of 8 costs per image what a batch of 1 does, or less.
MIN_BLOCK_ROWS = 64
# Set by plain_correlation_mode(): compute with ordinary tensor ops (see plain_correlation).
_PLAIN = ContextVar("fod_plain_correlation", default=False)


def _rows_per_block(groups: int, keys: int, rows: int, block_elements: int) -> int:
    return max(1, min(rows, block_elements // max(1, groups * keys)))


def _target_block(gy: Tensor, gx: Tensor, reference_maps: int, shift: float = 0.0) -> Tensor:
    """T + shift for a block of rows: (G, r, H) x (G, r, W) -> (G, r, reference_maps * H * W).

    T's rows sum to 1; the shift (eps) is added in the same pass as the outer product.
    """
    g, r, h = gy.shape
    if reference_maps > 1:
        gy = gy / reference_maps
    t = torch.addcmul(gy.new_tensor(shift), gy.unsqueeze(-1), gx.unsqueeze(-2))
    t = t.reshape(g, r, h * gx.shape[-1])
    return t.repeat(1, 1, reference_maps) if reference_maps > 1 else t


def _outside_autocast(fn):
    """Run the kernel in float32 even inside an autocast region (see :mod:`fod.precision`):
    its softmax, logarithms and row sums must not run in a 16-bit type."""

    @functools.wraps(fn)
    def wrapper(q: Tensor, k: Tensor, v: Tensor, gy: Tensor, gx: Tensor, *args, **kwargs):
        device = q.device.type
        if not torch.is_autocast_enabled(device):
            return fn(q, k, v, gy, gx, *args, **kwargs)
        with torch.autocast(device_type=device, enabled=False):
            tensors = (t.float() for t in (q, k, v, gy, gx))
            return fn(*tensors, *args, **kwargs)

    return wrapper


class _FusedCorrelation(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        gy: Tensor,
        gx: Tensor,
        reference_maps: int,
        eps: float,
        s_div_scale: float,
        block_elements: int,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        groups, rows, _ = q.shape
        keys = k.shape[1]
        out = q.new_empty(groups, rows, v.shape[-1])
        div = q.new_empty(groups, rows)
        ent = q.new_zeros(groups, rows)
        kt = k.transpose(1, 2)
        step = _rows_per_block(groups, keys, rows, block_elements)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            s = torch.softmax(torch.bmm(q[:, r0:r1], kt), dim=-1)
            out[:, r0:r1] = torch.bmm(s, v)
            s_eps = torch.add(s, eps)
            if with_entropy:
                ent[:, r0:r1] = torch.linalg.vecdot(s, torch.log(s_eps)).neg_()
            t_eps = _target_block(gy[:, r0:r1], gx[:, r0:r1], reference_maps, eps)
            # log(T + eps) - log(S + eps) as one logarithm of the ratio; T - S as a difference
            # of the two shifted maps.
            log_ratio = torch.div(t_eps, s_eps).log_()
            div[:, r0:r1] = torch.linalg.vecdot(t_eps.sub_(s_eps), log_ratio)
        ctx.save_for_backward(q, k, v, gy, gx)
        ctx.reference_maps, ctx.eps, ctx.s_div_scale, ctx.step = (
            reference_maps,
            eps,
            s_div_scale,
            step,
        )
        return out, div, ent

    @staticmethod
    def backward(ctx, g_out: Tensor | None, g_div: Tensor | None, g_ent: Tensor | None):
        q, k, v, gy, gx = ctx.saved_tensors
        reference_maps, eps, step = ctx.reference_maps, ctx.eps, ctx.step
        groups, rows, _ = q.shape
        height, width = gy.shape[-1], gx.shape[-1]
        need_target = g_div is not None and (ctx.needs_input_grad[3] or ctx.needs_input_grad[4])
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        dgy = torch.zeros_like(gy) if need_target else None
        dgx = torch.zeros_like(gx) if need_target else None
        kt = k.transpose(1, 2)
        vt = v.transpose(1, 2)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            q_r = q[:, r0:r1]
            s = torch.softmax(torch.bmm(q_r, kt), dim=-1)
            if g_out is not None:
                ds = torch.bmm(g_out[:, r0:r1], vt)
                dv.baddbmm_(s.transpose(1, 2), g_out[:, r0:r1])
            else:
                ds = torch.zeros_like(s)
            s_eps = torch.add(s, eps)
            if g_div is not None:
                # With r = (T + eps) / (S + eps):
                #   dDiv/dT = log r + 1 - 1 / r
                #   dDiv/dS = -log r - r            (up to a per-row constant)
                gd = g_div[:, r0:r1].unsqueeze(-1)
                ratio = _target_block(gy[:, r0:r1], gx[:, r0:r1], reference_maps, eps).div_(s_eps)
                log_ratio = torch.log(ratio)
                if need_target:
                    dt = torch.add(log_ratio, 1.0).sub_(ratio.reciprocal()).mul_(gd)
                    dt = dt.view(groups, r1 - r0, reference_maps, height, width)
                    dt = dt.sum(2).div_(reference_maps) if reference_maps > 1 else dt[:, :, 0]
                    dgy[:, r0:r1] = torch.linalg.vecdot(dt, gx[:, r0:r1].unsqueeze(-2))
                    dgx[:, r0:r1] = (dt * gy[:, r0:r1].unsqueeze(-1)).sum(-2)
                cd = gd * ctx.s_div_scale
                ds.addcmul_(log_ratio.add_(ratio), cd.expand_as(ratio), value=-1.0)
            if g_ent is not None:
                # dEnt/dS = -log(S + eps) + eps / (S + eps)   (up to a per-row constant)
                ge = g_ent[:, r0:r1].unsqueeze(-1)
                ds.addcmul_(torch.log(s_eps), ge.expand_as(s_eps), value=-1.0)
                ds.addcmul_(s_eps.reciprocal_(), (ge * eps).expand_as(s_eps))
            dlogits = torch._softmax_backward_data(ds, s, -1, s.dtype)
            dq[:, r0:r1] = torch.bmm(dlogits, k)
            dk.baddbmm_(dlogits.transpose(1, 2), q_r)
        return dq, dk, dv, dgy, dgx, None, None, None, None, None


@contextmanager
def plain_correlation_mode() -> Iterator[None]:
    """Within this block, :func:`correlation_attention` and :func:`fused_correlation` use
    :func:`plain_correlation` instead of the custom autograd Function.

    Tracing (``torch.jit.trace``, ``torch.onnx.export(dynamo=False)``) does so by itself: the
    ONNX exporter inlines the Function's forward but loses its in-place block writes, which
    would export a graph that silently returns zeros.
    """
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def _use_plain() -> bool:
    return _PLAIN.get() or torch.jit.is_tracing()


def plain_correlation(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gy: Tensor,
    gx: Tensor,
    reference_maps: int = 1,
    eps: float = EPS,
    s_div_scale: float = 1.0,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """What :func:`fused_correlation` computes, in one block of ordinary tensor ops.

    Any leading dimensions: ``q`` (..., R, dh), ``k`` and ``v`` (..., K, dh) broadcast against
    ``q`` (a key set of batch 1 serves every image), ``gy`` (..., R, H), ``gx`` (..., R, W).
    It materialises the full (..., R, K) maps, so it is for export and tests, not training;
    autograd still gives the fused path's gradients, ``s_div_scale`` included.
    """
    s = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1)
    out = torch.matmul(s, v)
    ent = -(s * torch.log(s + eps)).sum(-1) if with_entropy else torch.zeros_like(s[..., 0])
    if s_div_scale != 1.0 and torch.is_grad_enabled():  # same value, scaled gradient
        s = s * s_div_scale + s.detach() * (1.0 - s_div_scale)
    t = (gy / reference_maps).unsqueeze(-1) * gx.unsqueeze(-2)
    t = t.flatten(-2)
    if reference_maps > 1:
        t = torch.cat([t] * reference_maps, dim=-1)
    t_eps, s_eps = t + eps, s + eps
    div = ((t_eps - s_eps) * torch.log(t_eps / s_eps)).sum(-1)
    return out, div, ent


@_outside_autocast
def fused_correlation(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gy: Tensor,
    gx: Tensor,
    reference_maps: int = 1,
    eps: float = EPS,
    s_div_scale: float = 1.0,
    block_elements: int | None = None,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Attention output, per-row Div(T, S) and per-row Ent(S) for grouped rows.

    ``q``: (G, R, dh), already scaled by 1/sqrt(dh); ``k``, ``v``: (G, K, dh) with
    ``K = reference_maps * H * W``; ``gy``: (G, R, H); ``gx``: (G, R, W). Returns ``out``
    (G, R, dh), ``div`` (G, R) and ``ent`` (G, R); ``with_entropy=False`` leaves ``ent`` at
    zero and saves a logarithm per element (scoring needs no entropy).
    """
    block_elements = block_elements or BLOCK_ELEMENTS
    keys = k.shape[1]
    if keys != reference_maps * gy.shape[-1] * gx.shape[-1]:
        raise ValueError(
            f"keys ({keys}) must equal reference_maps * H * W = {reference_maps} * "
            f"{gy.shape[-1]} * {gx.shape[-1]}"
        )
    if _use_plain():
        return plain_correlation(q, k, v, gy, gx, reference_maps, eps, s_div_scale, with_entropy)
    groups, rows = q.shape[0], q.shape[1]
    per_call = max(1, block_elements // max(1, keys * min(rows, MIN_BLOCK_ROWS)))
    if groups <= per_call:
        return _FusedCorrelation.apply(
            q, k, v, gy, gx, reference_maps, eps, s_div_scale, block_elements, with_entropy
        )
    parts = [
        _FusedCorrelation.apply(
            q[g : g + per_call],
            k[g : g + per_call],
            v[g : g + per_call],
            gy[g : g + per_call],
            gx[g : g + per_call],
            reference_maps,
            eps,
            s_div_scale,
            block_elements,
            with_entropy,
        )
        for g in range(0, groups, per_call)
    ]
    return tuple(torch.cat(outputs) for outputs in zip(*parts, strict=True))


@_outside_autocast
def correlation_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gy: Tensor,
    gx: Tensor,
    reference_maps: int = 1,
    eps: float = EPS,
    s_div_scale: float = 1.0,
    block_elements: int | None = None,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched multi-head form: q (B, h, L, dh), k and v (Bk, h, K, dh) with Bk in {1, B}.

    A key set shared by the whole batch (Bk = 1, the inter branch's reference) is not copied
    per image: the batch's rows are stacked under each head instead.
    Returns out (B, h, L, dh), div (B, h, L), ent (B, h, L).
    """
    if _use_plain():
        return plain_correlation(q, k, v, gy, gx, reference_maps, eps, s_div_scale, with_entropy)
    b, h, n, dh = q.shape
    if k.shape[0] == 1 and b > 1:
        qg = q.transpose(0, 1).reshape(h, b * n, dh)
        gyg = gy.transpose(0, 1).reshape(h, b * n, gy.shape[-1])
        gxg = gx.transpose(0, 1).reshape(h, b * n, gx.shape[-1])
        out, div, ent = fused_correlation(
            qg, k[0], v[0], gyg, gxg, reference_maps, eps, s_div_scale, block_elements, with_entropy
        )
        out = out.reshape(h, b, n, -1).transpose(0, 1)
        return out, div.reshape(h, b, n).transpose(0, 1), ent.reshape(h, b, n).transpose(0, 1)
    k = k.expand(b, -1, -1, -1)
    v = v.expand(b, -1, -1, -1)
    out, div, ent = fused_correlation(
        q.reshape(b * h, n, dh),
        k.reshape(b * h, k.shape[2], dh),
        v.reshape(b * h, v.shape[2], v.shape[3]),
        gy.reshape(b * h, n, gy.shape[-1]),
        gx.reshape(b * h, n, gx.shape[-1]),
        reference_maps,
        eps,
        s_div_scale,
        block_elements,
        with_entropy,
    )
    return out.reshape(b, h, n, -1), div.reshape(b, h, n), ent.reshape(b, h, n)
