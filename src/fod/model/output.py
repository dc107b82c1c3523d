"""What one forward pass of the FOD transformer gives to the objective and the scores.

Its own module so that the transformer (which produces it) and the objective and scores
(which consume it) import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class FODOutput:
    """What the objective and the scores need from one forward pass.

    ``tokens`` (B, L, C) are the input features X, ``reconstruction`` (B, L, C) is X_hat; the
    Div and Ent fields are per token (B, L), averaged over heads and layers, None where the
    branch is off.
    """

    tokens: Tensor
    reconstruction: Tensor
    div_intra: Tensor | None = None
    ent_intra: Tensor | None = None
    div_inter: Tensor | None = None
    ent_inter: Tensor | None = None

    def rows(self, index: Tensor) -> FODOutput:
        """The outputs of the images ``index`` picks (a slice of a pass over more images)."""
        optional = (self.div_intra, self.ent_intra, self.div_inter, self.ent_inter)
        return FODOutput(
            self.tokens[index],
            self.reconstruction[index],
            *(None if t is None else t[index] for t in optional),
        )
