"""Direct, slow transcription of the spec's formulas: the reference for tests and benchmarks.

It runs on the parameters of a :class:`FODTransformer` but none of its fast code: full
``B x h x L x L`` attention maps, the target built from full distance matrices with the sigmas
repeated to that size (as the authors do), KL divergences computed as written, ``loss1`` and
``loss2`` each built with its own stop-gradients, and two backward calls. Anything the fast path
does differently (separable target, fused blocks, one backward) must agree with this.

>>> loss1, loss2 = direct_train_step(model, features)   # leaves the gradients in .grad
>>> direct_scores(model, features).shape                 # (B, H, W)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from fod.model.attention import CorrelationAttention
from fod.model.correlation import EPS
from fod.model.transformer import FODTransformer


@dataclass
class DirectOutput:
    tokens: Tensor
    reconstruction: Tensor
    intra: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (S, T) per layer
    inter: list[tuple[Tensor, Tensor]] = field(default_factory=list)


def _linear(layer: torch.nn.Linear, x: Tensor) -> Tensor:
    return x @ layer.weight.t() + layer.bias


def _grid_positions(height: int, width: int, reference_maps: int) -> tuple[Tensor, Tensor]:
    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.float64).repeat(height)
    return rows.repeat(reference_maps), cols.repeat(reference_maps)


def _attention(
    att: CorrelationAttention,
    x: Tensor,
    context: Tensor,
    height: int,
    width: int,
    reference_maps: int,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    b, n, d = x.shape
    h = att.heads
    dh = d // h
    context = context.expand(b, -1, -1)
    keys = context.shape[1]
    q = _linear(att.query, x).view(b, n, h, dh).permute(0, 2, 1, 3)
    k = _linear(att.key, context).view(b, keys, h, dh).permute(0, 2, 1, 3)
    v = _linear(att.value, context).view(b, keys, h, dh).permute(0, 2, 1, 3)
    logits = q @ k.transpose(-1, -2) / math.sqrt(dh)
    s = torch.exp(logits - logits.amax(-1, keepdim=True))
    s = s / s.sum(-1, keepdim=True)
    o = (s @ v).permute(0, 2, 1, 3).reshape(b, n, d)
    if att.out is not None:
        o = _linear(att.out, o)
    if att.sigma is None:
        return o, None, None
    raw = _linear(att.sigma, x).view(b, n, h, 2).permute(0, 2, 1, 3)  # (B, h, L, 2)
    sigma = torch.pow(3.0, torch.sigmoid(5.0 * raw) + 1e-5) - 1.0
    sigma_y = sigma[..., 0:1].repeat(1, 1, 1, keys)
    sigma_x = sigma[..., 1:2].repeat(1, 1, 1, keys)
    q_rows, q_cols = _grid_positions(height, width, 1)
    k_rows, k_cols = _grid_positions(height, width, reference_maps)
    dist_y = (q_rows[:, None] - k_rows[None, :]).to(x)  # (L, k L), on x's device
    dist_x = (q_cols[:, None] - k_cols[None, :]).to(x)
    t = (
        1.0
        / (2.0 * math.pi * sigma_y * sigma_x)
        * torch.exp(-(dist_y**2) / (2.0 * sigma_y**2) - dist_x**2 / (2.0 * sigma_x**2))
    )
    t = t / t.sum(-1, keepdim=True)
    return o, s, t


def direct_forward(model: FODTransformer, features: Tensor) -> DirectOutput:
    """The forward pass written out; keeps every layer's full S and T."""
    spec, variant = model.spec, model.variant
    b = features.shape[0]
    tokens = features.flatten(2).transpose(1, 2)
    z = _linear(model.embed, tokens) + model.position
    reference = None
    if variant.inter:
        ref_tokens = model.reference.flatten(2).transpose(1, 2)
        reference = (_linear(model.reference_embed, ref_tokens) + model.position).reshape(
            1, -1, spec.d_model
        )
        reference = reference.repeat(b, 1, 1)
    out = DirectOutput(tokens, tokens)
    reference_maps = variant.reference_maps
    for layer in model.layers:
        if layer.plain is not None:
            o, _, _ = _attention(layer.plain, z, z, spec.height, spec.width, 1)
            h = z + o
        else:
            o_intra = o_inter = None
            if layer.intra is not None:
                o_intra, s, t = _attention(layer.intra, z, z, spec.height, spec.width, 1)
                out.intra.append((s, t))
            if layer.inter is not None:
                o_inter, s, t = _attention(
                    layer.inter, z, reference, spec.height, spec.width, reference_maps
                )
                out.inter.append((s, t))
            if o_intra is not None and o_inter is not None:
                h = (z + o_intra) - (z + o_inter)
            else:
                h = z + (o_intra if o_intra is not None else o_inter)
        z = F.layer_norm(h, (spec.d_model,), layer.norm1.weight, layer.norm1.bias)
        y = _linear(layer.ffn[2], F.gelu(_linear(layer.ffn[0], z)))
        z = F.layer_norm(z + y, (spec.d_model,), layer.norm2.weight, layer.norm2.bias)
    z = F.layer_norm(z, (spec.d_model,), model.norm.weight, model.norm.bias)
    out.reconstruction = _linear(model.head, z)
    return out


def kl_rows(p: Tensor, q: Tensor, eps: float = EPS) -> Tensor:
    """KL(P||Q) of every row: sum_k P_k (log(P_k + eps) - log(Q_k + eps))."""
    return (p * (torch.log(p + eps) - torch.log(q + eps))).sum(-1)


def div(t: Tensor, s: Tensor) -> Tensor:
    """Mean over batch, heads and query rows of KL(T||S) + KL(S||T)."""
    return (kl_rows(t, s) + kl_rows(s, t)).mean()


def ent(s: Tensor, eps: float = EPS) -> Tensor:
    return (-(s * torch.log(s + eps)).sum(-1)).mean()


def _layer_mean(values: list[Tensor]) -> Tensor:
    return sum(values) / len(values)


def rec_loss(tokens: Tensor, reconstruction: Tensor) -> Tensor:
    mse = ((reconstruction - tokens) ** 2).mean()
    cos = (reconstruction * tokens).sum(-1) / (reconstruction.norm(dim=-1) * tokens.norm(dim=-1))
    return mse + (1.0 - cos).mean()


def direct_losses(
    out: DirectOutput, model: FODTransformer, lambda1: float = 0.5, lambda2: float = 0.5
) -> tuple[Tensor, Tensor]:
    """loss1 and loss2 of spec section 5, each with its own stop-gradients."""
    variant = model.variant
    rec = rec_loss(out.tokens, out.reconstruction)
    loss1, loss2 = rec, rec
    if variant.intra:
        loss1 = loss1 + lambda1 * _layer_mean([div(t, s.detach()) for s, t in out.intra])
        loss2 = loss2 - lambda1 * _layer_mean([div(t.detach(), s) for s, t in out.intra])
        if variant.entropy:
            loss2 = loss2 - lambda2 * _layer_mean([ent(s) for s, _ in out.intra])
    if variant.inter:
        loss1 = loss1 - lambda1 * _layer_mean([div(t, s.detach()) for s, t in out.inter])
        loss2 = loss2 + lambda1 * _layer_mean([div(t.detach(), s) for s, t in out.inter])
        if variant.entropy:
            loss2 = loss2 + lambda2 * _layer_mean([ent(s) for s, _ in out.inter])
    return loss1, loss2


def direct_train_step(
    model: FODTransformer, features: Tensor, lambda1: float = 0.5, lambda2: float = 0.5
) -> tuple[float, float]:
    """Forward, then loss1.backward() and loss2.backward(), as the authors do."""
    out = direct_forward(model, features)
    loss1, loss2 = direct_losses(out, model, lambda1, lambda2)
    loss1.backward(retain_graph=True)
    loss2.backward()
    return loss1.item(), loss2.item()


def direct_scores(model: FODTransformer, features: Tensor) -> Tensor:
    """(B, H, W) per-token scores of spec section 6, from the full maps."""
    spec, variant = model.spec, model.variant
    out = direct_forward(model, features)
    x, x_hat = out.tokens, out.reconstruction
    cos = (x * x_hat).sum(-1) / (x.norm(dim=-1) * x_hat.norm(dim=-1))
    rec = ((x - x_hat) ** 2).mean(-1) + 1.0 - cos

    def token_div(pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
        per_layer = [(kl_rows(s, t) + kl_rows(t, s)).mean(1) for s, t in pairs]  # over heads
        return _layer_mean(per_layer)

    factor = None
    if variant.inter:
        p = torch.softmax(-token_div(out.inter), dim=-1)
        factor = p.max(dim=-1, keepdim=True).values - p
    elif variant.intra:
        factor = torch.softmax(-token_div(out.intra), dim=-1)
    if variant.score == "rec":
        score = rec
    elif variant.score == "div":
        score = factor
    else:
        score = rec * factor
    return score.reshape(x.shape[0], spec.height, spec.width)
