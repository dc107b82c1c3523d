"""Per-token anomaly scores, spec section 6.

- rec: mean over channels of (x - x_hat)^2, plus 1 - cos(x, x_hat);
- inter factor: p = softmax over the tokens of -d_inter, factor = max(p) - p (a token whose
  attention to the normal reference strays from its target scores high);
- intra factor (intra branch alone): softmax over the tokens of -d_intra;
- score "rec_div": rec * factor; "div": the factor alone; "rec": rec alone.

With both branches the factor is the inter one, as in the authors' full model (their intra
factor is computed but unused). d is the per-token symmetric KL averaged over heads and layers.

>>> token_scores(model(features), model.variant, height=5, width=7).shape
torch.Size([2, 5, 7])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fod.model.output import FODOutput
from fod.model.variant import Variant


def reconstruction_score(tokens: Tensor, reconstruction: Tensor) -> Tensor:
    """(B, L): squared error averaged over channels plus cosine distance."""
    mse = (tokens - reconstruction).pow(2).mean(-1)
    return mse + 1.0 - F.cosine_similarity(tokens, reconstruction, dim=-1)


def score_branches(variant: Variant) -> frozenset[str]:
    """The branches whose Div the score of ``variant`` uses (the factor's branch only)."""
    if variant.score == "rec" or not variant.has_correlation:
        return frozenset()
    return frozenset({"inter" if variant.inter else "intra"})


def discrepancy_factor(output: FODOutput, variant: Variant) -> Tensor:
    """(B, L) correlation factor of the score (inter if present, else intra)."""
    if variant.inter:
        p = torch.softmax(-output.div_inter, dim=-1)
        return p.amax(dim=-1, keepdim=True) - p
    if variant.intra:
        return torch.softmax(-output.div_intra, dim=-1)
    raise ValueError("the patch-wise variant has no correlation factor; use score='rec'")


def token_scores(output: FODOutput, variant: Variant, height: int, width: int) -> Tensor:
    """(B, height, width) anomaly score of every token; higher means more anomalous."""
    b = output.tokens.shape[0]
    if variant.score == "rec":
        score = reconstruction_score(output.tokens, output.reconstruction)
    elif variant.score == "div":
        score = discrepancy_factor(output, variant)
    else:
        rec = reconstruction_score(output.tokens, output.reconstruction)
        score = rec * discrepancy_factor(output, variant)
    return score.reshape(b, height, width)
