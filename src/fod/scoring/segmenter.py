"""The anomaly segmenter: a small convolutional net that marks anomalous tokens in the heat map.

The statistics of good images (the calibrated head's parts) say how unusual a token is, one
token at a time. On MTD their heat map misses much of a defect's extent (AUPRO 0.75): a
defect shows at its edges more than inside. The segmenter is taught what a defect region
looks like on the features: trained on the fit images and on synthetic anomalies made on
them (:mod:`fod.data.anomalies`), it labels every token with the share of its cell that is
anomalous. Its logit, standardised on the held-out good images like every head part and
clamped at 0, is added to the heat map. The clamp is there because the segmenter knows only
the anomalies it was shown: a logit below that of good tokens is no evidence of normality,
and unclamped it cancelled the statistics inside large real defects unlike the synthetic
ones (MTD's ``uneven``; see the README's ablation). It does not enter the image score or the
threshold: the synthetic validation that weighs those uses anomalies of the same kinds, so it
could not judge the segmenter fairly.

All levels are brought to the finest grid (bilinear, as the heat map does) and concatenated;
the net is 1x1 -> ReLU -> 3x3 -> ReLU, then a 1x1 convolution to the logit. With ``context``
(an option, ``--segmenter-context``) a second path sees a wider neighbourhood: the hidden
features averaged over :data:`POOL` x :data:`POOL` tokens, a 3x3 convolution and ReLU there,
brought back to the grid bilinearly and concatenated with the first before the logit. A
token of a large region unlike its surroundings (a faint patch of another texture) looks
normal on its own; the pooled path compares a neighbourhood of 12 x 12 tokens. Statistics
and weights are buffers and parameters, so it saves with ``state_dict`` and exports with
the :class:`~fod.scoring.Detector`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Widths of the two hidden layers.
HIDDEN = (128, 64)
#: Tokens per side averaged by the context path.
POOL = 4


def stack_levels(features: Sequence[Tensor], grid: tuple[int, int]) -> Tensor:
    """One (B, sum C_l, H, W) tensor: each level's (B, C_l, H_l, W_l) features brought to
    ``grid`` bilinearly (``align_corners=False``), then concatenated."""
    out = []
    for f in features:
        if tuple(f.shape[-2:]) != tuple(grid):
            f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
        out.append(f)
    return torch.cat(out, dim=1)


class AnomalySegmenter(nn.Module):
    """Levels' features -> (B, H, W) standardised anomaly evidence on the finest grid.

    ``max((logit - center) / scale, 0)``, where the input is standardised per channel with the good
    fit images' ``input_mean`` / ``input_scale`` and ``center`` / ``scale`` are the logits'
    mean and spread over held-out good tokens. ``context=True`` adds the pooled path. Train
    it with
    :func:`fod.training.segmenter.fit_segmenter`.
    """

    def __init__(
        self, channels: Sequence[int], height: int, width: int, context: bool = False
    ) -> None:
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.grid = (int(height), int(width))
        total = sum(self.channels)
        self.net = nn.Sequential(
            nn.Conv2d(total, HIDDEN[0], 1),
            nn.ReLU(),
            nn.Conv2d(HIDDEN[0], HIDDEN[1], 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(HIDDEN[1] * (2 if context else 1), 1, 1),
        )
        self.context = (
            nn.Sequential(nn.Conv2d(HIDDEN[1], HIDDEN[1], 3, padding=1), nn.ReLU())
            if context
            else None
        )
        self.register_buffer("input_mean", torch.zeros(1, total, 1, 1))
        self.register_buffer("input_scale", torch.ones(1, total, 1, 1))
        self.register_buffer("center", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    @property
    def has_context(self) -> bool:
        """Whether the pooled context path is there."""
        return self.context is not None

    def logits(self, features: Sequence[Tensor]) -> Tensor:
        """(B, H, W) raw logits (positive: anomalous) of the levels' ``features``."""
        if len(features) != len(self.channels):
            raise ValueError(
                f"the segmenter takes {len(self.channels)} feature levels, got {len(features)}"
            )
        x = stack_levels(features, self.grid)
        hidden = self.net[:4]((x - self.input_mean) * self.input_scale)
        if self.context is not None:
            wide = F.avg_pool2d(hidden, POOL, ceil_mode=True)
            wide = F.interpolate(
                self.context(wide), size=self.grid, mode="bilinear", align_corners=False
            )
            hidden = torch.cat([hidden, wide], dim=1)
        return self.net[4](hidden)[:, 0]

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """(B, H, W) logits standardised on held-out good images, clamped at 0."""
        return ((self.logits(features) - self.center) / self.scale).clamp_min(0.0)

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> AnomalySegmenter:
        """A segmenter of the shapes ``state`` holds (as a model file stores it)."""
        total = int(state["input_mean"].shape[1])
        grid = state.get("grid")
        if grid is None or grid.numel() != 2:
            raise ValueError("segmenter state has no grid")
        levels = state.get("level_channels")
        if levels is None or int(levels.sum()) != total:
            raise ValueError("segmenter state's level channels do not add up to its input")
        context = state.get("context")  # absent in files from before the context path
        seg = cls(
            [int(c) for c in levels],
            int(grid[0]),
            int(grid[1]),
            context=context is not None and bool(context),
        )
        seg.load_state_dict({k: v for k, v in state.items() if k not in _SHAPES}, strict=True)
        return seg

    def to_state(self) -> dict[str, Tensor]:
        """``state_dict`` plus the grid and the levels' channels, for :meth:`from_state_dict`."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        state["grid"] = torch.tensor(self.grid)
        state["level_channels"] = torch.tensor(self.channels)
        state["context"] = torch.tensor(self.has_context)
        return state


_SHAPES = ("grid", "level_channels", "context")

__all__ = ["HIDDEN", "POOL", "AnomalySegmenter", "stack_levels"]
