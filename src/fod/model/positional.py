"""Fixed 2D sine-cosine position code (spec section 2).

Half the channels encode the column, half the row; each half holds sin and cos pairs at
geometric frequencies with base 10000, as in the usual 1D code.

>>> sincos_2d(5, 7, 16).shape
torch.Size([35, 16])
"""

from __future__ import annotations

import torch
from torch import Tensor


def sincos_1d(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """(N,) positions -> (N, dim): [sin(p w_0..), cos(p w_0..)] with w_k = base^(-2k/dim)."""
    half = dim // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2.0 / dim)
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(height: int, width: int, dim: int) -> Tensor:
    """Position code of a row-major ``height x width`` grid: (height * width, dim), float32."""
    if dim % 4:
        raise ValueError(f"dim ({dim}) must be divisible by 4")
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    code = torch.cat([sincos_1d(cols, dim // 2), sincos_1d(rows, dim // 2)], dim=1)
    return code.float()
