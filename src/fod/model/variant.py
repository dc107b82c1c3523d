"""The switches of the paper's ablation table (spec section 8) and the sizes of one level.

>>> Variant()               # the full model: patch + intra + inter, entropy, mean, Rec & Div
>>> Variant.patch_only()    # patch-wise reconstruction alone, score Rec
>>> LevelSpec(channels=48, height=32, width=32, d_model=256)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

SCORES = ("rec", "div", "rec_div")
REFERENCES = ("mean", "coreset")


@dataclass(frozen=True)
class Variant:
    """Which views, constraint, reference and score a model uses.

    ``intra`` and ``inter`` switch the two correlation branches; with both off the encoder is a
    plain self-attention reconstruction transformer (the "patch-wise" row). ``entropy`` adds the
    entropy terms to the objective. ``reference`` is the inter branch's key set: the per-position
    mean of the training features, or a coreset of whole training maps. ``score`` picks the
    per-token anomaly score. ``output_projection`` applies the attention's output projection,
    which the authors' code computes and then discards.
    """

    intra: bool = True
    inter: bool = True
    entropy: bool = True
    reference: str = "mean"
    coreset_size: int = 4
    score: str = "rec_div"
    output_projection: bool = False

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        if self.coreset_size < 1:
            raise ValueError(f"coreset_size must be at least 1, got {self.coreset_size}")
        if self.score != "rec" and not (self.intra or self.inter):
            raise ValueError(
                f"score {self.score!r} needs a correlation branch: set intra or inter, "
                "or use score='rec' for patch-wise reconstruction"
            )

    @classmethod
    def patch_only(cls) -> Variant:
        return cls(intra=False, inter=False, entropy=False, score="rec")

    @property
    def has_correlation(self) -> bool:
        return self.intra or self.inter

    @property
    def reference_maps(self) -> int:
        """How many reference maps the inter branch attends to (k of spec section 3)."""
        return self.coreset_size if self.reference == "coreset" else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Variant:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class LevelSpec:
    """Sizes of one feature level's transformer; nothing in the model is hard-coded."""

    channels: int
    height: int
    width: int
    d_model: int
    heads: int = 8
    layers: int = 3
    ffn_ratio: int = 4

    def __post_init__(self) -> None:
        for name in ("channels", "height", "width", "d_model", "heads", "layers", "ffn_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.d_model % 4:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by 4 for the 2D sine-cosine code"
            )

    @property
    def tokens(self) -> int:
        return self.height * self.width

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LevelSpec:
        return cls(**data)
