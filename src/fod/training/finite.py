"""Non-finite numbers (NaN, infinity) never ship: one check for weights, losses and thresholds.

A learning rate that is too high makes the loss and then the weights NaN; such a model scores
every image NaN and calls every image normal. Training stops at the first non-finite loss or
parameter, and model files with non-finite weights or threshold are neither written nor read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from fod.errors import option


def nonfinite(named: Iterable[tuple[str, Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [
        name
        for name, t in named
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def lower_lr_hint(lr: float) -> str:
    """The fix for a diverged run, in the words of the interface."""
    return f"Lower the learning rate ({option('lr', '--lr')} is {lr:g}; try 10 times less)."


__all__ = ["is_finite_number", "lower_lr_hint", "nonfinite"]
