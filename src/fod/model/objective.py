"""The training objective of spec section 5 in one backward pass.

The authors compute

    loss1 = L_rec + l1 Div(T_g, sg S_g) - l1 Div(T_e, sg S_e)
    loss2 = L_rec - l1 Div(sg T_g, S_g) - l2 Ent(S_g) + l1 Div(sg T_e, S_e) + l2 Ent(S_e)

and call backward on each. Their summed gradient is that of

    total = 2 L_rec + l1 Div*_g - l1 Div*_e - l2 Ent(S_g) + l2 Ent(S_e)

where Div* is Div with its gradient on the attention side reversed, which is what the model's
``div`` outputs carry (``CorrelationAttention.minimax``). So one Div per branch and layer, one
backward pass, and the same parameter gradients. The values of loss1 and loss2 are reported too.

>>> terms = fod_objective(model(features), model.variant)
>>> terms.total.backward()
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from fod.model.output import FODOutput
from fod.model.variant import Variant


@dataclass
class LossTerms:
    """``total`` is what to call backward on; the rest are detached values for logging."""

    total: Tensor
    loss1: float
    loss2: float
    rec: float
    div_intra: float | None = None
    ent_intra: float | None = None
    div_inter: float | None = None
    ent_inter: float | None = None

    def as_dict(self) -> dict[str, float]:
        keys = ("loss1", "loss2", "rec", "div_intra", "ent_intra", "div_inter", "ent_inter")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def reconstruction_loss(tokens: Tensor, reconstruction: Tensor) -> Tensor:
    """MSE over all elements plus the mean over tokens of (1 - cosine similarity)."""
    mse = F.mse_loss(reconstruction, tokens)
    cos = F.cosine_similarity(reconstruction, tokens, dim=-1)
    return mse + (1.0 - cos).mean()


def fod_objective(
    output: FODOutput, variant: Variant, lambda1: float = 0.5, lambda2: float = 0.5
) -> LossTerms:
    """The loss terms of one forward pass (computed with all statistics, the default)."""
    needs = {"div_intra": variant.intra, "div_inter": variant.inter}
    needs.update(ent_intra=variant.intra and variant.entropy)
    needs.update(ent_inter=variant.inter and variant.entropy)
    missing = [name for name, needed in needs.items() if needed and getattr(output, name) is None]
    if missing:
        raise ValueError(
            f"the objective needs {', '.join(missing)}: call the model with its default "
            "stats and entropy=True"
        )
    rec = reconstruction_loss(output.tokens, output.reconstruction)
    total = 2.0 * rec
    loss1 = loss2 = rec.item()
    logged: dict[str, float] = {}
    if variant.intra:
        div_g = output.div_intra.mean()
        total = total + lambda1 * div_g
        loss1 += lambda1 * div_g.item()
        loss2 -= lambda1 * div_g.item()
        logged.update(div_intra=div_g.item())
        if output.ent_intra is not None:
            ent_g = output.ent_intra.mean()
            logged.update(ent_intra=ent_g.item())
            if variant.entropy:
                total = total - lambda2 * ent_g
                loss2 -= lambda2 * ent_g.item()
    if variant.inter:
        div_e = output.div_inter.mean()
        total = total - lambda1 * div_e
        loss1 -= lambda1 * div_e.item()
        loss2 += lambda1 * div_e.item()
        logged.update(div_inter=div_e.item())
        if output.ent_inter is not None:
            ent_e = output.ent_inter.mean()
            logged.update(ent_inter=ent_e.item())
            if variant.entropy:
                total = total + lambda2 * ent_e
                loss2 += lambda2 * ent_e.item()
    return LossTerms(total, loss1, loss2, rec.item(), **logged)


__all__ = ["LossTerms", "fod_objective", "reconstruction_loss"]
