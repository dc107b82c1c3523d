"""One correlation branch (intra or inter) of an encoder layer, spec section 4.

Queries come from the tokens, keys and values from a context: the tokens themselves (intra,
self-attention) or the embedded reference features (inter, cross-attention). A linear layer
predicts per query and head the scales (sigma_y, sigma_x) of the target correlation. With
``correlation=False`` the module is a plain multi-head self-attention (the patch-wise row).

>>> attn = CorrelationAttention(d_model=32, heads=4)
>>> x = torch.randn(2, 35, 32)
>>> result = attn(x, x, height=5, width=7)
>>> result.out.shape, result.div.shape
(torch.Size([2, 35, 32]), torch.Size([2, 35]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fod.model.correlation import EPS, correlation_attention
from fod.model.target import separable_target, sigma_from_raw


@dataclass
class AttentionResult:
    """Output tokens, and per query the head-averaged Div(T, S) and Ent(S) (None if plain)."""

    out: Tensor
    div: Tensor | None = None
    ent: Tensor | None = None


class CorrelationAttention(nn.Module):
    """Multi-head attention whose attention map is also compared with an RBF target.

    ``minimax=True`` reverses the gradient of ``div`` on the attention side, so that one
    backward pass of the objective trains the target side and the attention side in opposite
    directions (spec section 5). ``div`` is meant for the objective and the scores only.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        output_projection: bool = False,
        correlation: bool = True,
        minimax: bool = True,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.minimax = minimax
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.sigma = nn.Linear(d_model, 2 * heads) if correlation else None
        self.out = nn.Linear(d_model, d_model) if output_projection else None

    def _split(self, t: Tensor) -> Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        height: int,
        width: int,
        reference_maps: int = 1,
        with_stats: bool = True,
        with_entropy: bool = True,
    ) -> AttentionResult:
        """``x``: (B, L, d) queries on a height x width grid; ``context``: (B or 1, k L, d) with
        k = ``reference_maps``.

        ``with_stats=False`` skips the target, Div and Ent (plain fused attention): scoring
        needs them from one branch only. ``with_entropy=False`` skips Ent (``ent`` is None).
        """
        b, n, d = x.shape
        q = self._split(self.query(x))
        k = self._split(self.key(context))
        v = self._split(self.value(context))
        div = ent = None
        if self.sigma is None or not with_stats:
            o = F.scaled_dot_product_attention(q, k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
        else:
            # the scales and targets in float32 even under autocast: in bf16, 3^(1e-5) - 1 is 0
            raw = self.sigma(x)
            raw = raw.to(torch.promote_types(raw.dtype, torch.float32))
            sigma = sigma_from_raw(raw).view(b, n, self.heads, 2).transpose(1, 2)
            gy, gx = separable_target(sigma, height, width)
            scale = (d // self.heads) ** -0.5
            o, div_h, ent_h = correlation_attention(
                q * scale,
                k,
                v,
                gy,
                gx,
                reference_maps,
                EPS,
                -1.0 if self.minimax else 1.0,
                with_entropy=with_entropy,
            )
            div = div_h.mean(1)
            ent = ent_h.mean(1) if with_entropy else None
        o = o.transpose(1, 2).reshape(b, n, d)
        if self.out is not None:
            o = self.out(o)
        return AttentionResult(o, div, ent)
