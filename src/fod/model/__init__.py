"""The FOD transformer, its objective and its scores: plain nn.Modules and functions, no I/O."""

from fod.model.correlation import correlation_attention, fused_correlation
from fod.model.objective import LossTerms, fod_objective, reconstruction_loss
from fod.model.output import FODOutput
from fod.model.reference import coreset_reference, mean_reference
from fod.model.scores import token_scores
from fod.model.transformer import FODTransformer
from fod.model.variant import LevelSpec, Variant

__all__ = [
    "FODOutput",
    "FODTransformer",
    "LevelSpec",
    "LossTerms",
    "Variant",
    "coreset_reference",
    "correlation_attention",
    "fod_objective",
    "fused_correlation",
    "mean_reference",
    "reconstruction_loss",
    "token_scores",
]
