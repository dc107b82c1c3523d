"""The FOD transformer of one feature level (spec sections 2 to 4).

Tokens X (the pooled backbone features) are embedded (1x1 projection plus a fixed 2D
sine-cosine code) and pass through encoder layers. Each layer has an intra branch
(self-attention) and an inter branch (cross-attention against the embedded reference
features); with both, I2Correlation keeps the residual O_intra - O_inter of their outputs.
Then LayerNorm, an FFN with a residual, LayerNorm; after the last layer a final LayerNorm and
a linear layer back to C channels give the reconstruction X_hat.

>>> spec = LevelSpec(channels=12, height=5, width=7, d_model=32, heads=4, layers=2)
>>> model = FODTransformer(spec, Variant(), reference=torch.randn(1, 12, 5, 7))
>>> out = model(torch.randn(2, 12, 5, 7))
>>> out.reconstruction.shape, out.div_inter.shape
(torch.Size([2, 35, 12]), torch.Size([2, 35]))

Paper: Yao et al., "Focus the Discrepancy", ICCV 2023, arXiv 2308.02983.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fod.model.attention import AttentionResult, CorrelationAttention
from fod.model.output import FODOutput
from fod.model.positional import sincos_2d
from fod.model.scores import score_branches, token_scores
from fod.model.variant import LevelSpec, Variant

BRANCHES = frozenset({"intra", "inter"})


class EncoderLayer(nn.Module):
    """Intra and/or inter attention, I2Correlation, then post-norm FFN."""

    def __init__(self, d_model: int, heads: int, ffn_ratio: int, variant: Variant) -> None:
        super().__init__()
        proj = variant.output_projection
        self.intra = CorrelationAttention(d_model, heads, proj) if variant.intra else None
        self.inter = CorrelationAttention(d_model, heads, proj) if variant.inter else None
        self.plain = (
            None
            if variant.has_correlation
            else CorrelationAttention(d_model, heads, proj, correlation=False)
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_ratio * d_model),
            nn.GELU(),
            nn.Linear(ffn_ratio * d_model, d_model),
        )
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        x: Tensor,
        reference: Tensor | None,
        height: int,
        width: int,
        reference_maps: int,
        div_branches: frozenset[str] = BRANCHES,
        entropy: bool = True,
    ) -> tuple[Tensor, AttentionResult | None, AttentionResult | None]:
        intra = inter = None
        if self.plain is not None:
            h = x + self.plain(x, x, height, width).out
        else:
            if self.intra is not None:
                intra = self.intra(x, x, height, width, 1, "intra" in div_branches, entropy)
            if self.inter is not None:
                inter = self.inter(
                    x, reference, height, width, reference_maps, "inter" in div_branches, entropy
                )
            if intra is not None and inter is not None:
                h = intra.out - inter.out  # I2Correlation: (x + O_intra) - (x + O_inter)
            else:
                h = x + (intra or inter).out
        x = self.norm1(h)
        x = self.norm2(x + self.ffn(x))
        return x, intra, inter


def _layer_mean(values: list[Tensor | None]) -> Tensor | None:
    values = [v for v in values if v is not None]
    return torch.stack(values).mean(0) if values else None


class FODTransformer(nn.Module):
    """FOD for one feature level; every size comes from ``spec``.

    ``reference`` is (k, C, H, W): the per-position mean of the training features (k = 1) or k
    coreset maps; it is a buffer, so it travels with the state dict. It may be omitted when a
    state dict will be loaded afterwards.
    """

    def __init__(
        self, spec: LevelSpec, variant: Variant | None = None, reference: Tensor | None = None
    ) -> None:
        super().__init__()
        variant = variant or Variant()
        self.spec, self.variant = spec, variant
        d = spec.d_model
        self.embed = nn.Linear(spec.channels, d)
        self.register_buffer("position", sincos_2d(spec.height, spec.width, d), persistent=False)
        if variant.inter:
            reference_maps = variant.reference_maps
            expected = (reference_maps, spec.channels, spec.height, spec.width)
            if reference is None:
                reference = torch.zeros(expected)
            if tuple(reference.shape) != expected:
                raise ValueError(
                    f"reference has shape {tuple(reference.shape)}, expected {expected} "
                    f"(k maps, C, H, W) for this level and variant"
                )
            self.reference_embed = nn.Linear(spec.channels, d)
            self.register_buffer("reference", reference.detach().clone().float())
        self.layers = nn.ModuleList(
            EncoderLayer(d, spec.heads, spec.ffn_ratio, variant) for _ in range(spec.layers)
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, spec.channels)

    def check_features(self, features: Tensor) -> None:
        s = self.spec
        if features.dim() != 4 or tuple(features.shape[1:]) != (s.channels, s.height, s.width):
            raise ValueError(
                f"features have shape {tuple(features.shape)}, this level expects "
                f"(B, {s.channels}, {s.height}, {s.width})"
            )

    def embedded_reference(self) -> Tensor:
        """Embedded reference tokens (1, k L, d); every map keeps the grid's position code."""
        ref = self.reference.flatten(2).transpose(1, 2)  # (k, L, C)
        r = self.reference_embed(ref) + self.position
        return r.reshape(1, -1, self.spec.d_model)

    def forward(
        self, features: Tensor, div_branches: frozenset[str] = BRANCHES, entropy: bool = True
    ) -> FODOutput:
        """``features``: (B, C, H, W) pooled backbone features of this level.

        ``div_branches`` names the branches whose Div and Ent are computed (all for training); the
        others run as plain attention, which is all that scoring needs of them.
        ``entropy=False`` skips Ent (its fields are None), which scoring does not use.
        """
        self.check_features(features)
        s = self.spec
        tokens = features.flatten(2).transpose(1, 2)
        z = self.embed(tokens) + self.position
        reference = self.embedded_reference() if self.variant.inter else None
        reference_maps = self.variant.reference_maps
        # Per FODOutput field, that statistic of every layer; the output holds their mean.
        per_layer: dict[str, list[Tensor | None]] = {
            "div_intra": [],
            "ent_intra": [],
            "div_inter": [],
            "ent_inter": [],
        }
        for layer in self.layers:
            z, intra, inter = layer(
                z, reference, s.height, s.width, reference_maps, div_branches, entropy
            )
            for branch, result in (("intra", intra), ("inter", inter)):
                if result is not None:
                    per_layer[f"div_{branch}"].append(result.div)
                    per_layer[f"ent_{branch}"].append(result.ent)
        reconstruction = self.head(self.norm(z))
        means = {field: _layer_mean(values) for field, values in per_layer.items()}
        return FODOutput(tokens, reconstruction, **means)

    def score(self, features: Tensor) -> Tensor:
        """(B, H, W) per-token anomaly scores, computing only the statistics they use."""
        output = self(features, div_branches=score_branches(self.variant), entropy=False)
        return token_scores(output, self.variant, self.spec.height, self.spec.width)
