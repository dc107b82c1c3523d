"""The RBF target correlation of spec section 4, built separably.

For the query at grid cell (i, j) the target over keys (i', j') is proportional to
``exp(-(i - i')^2 / (2 sigma_y^2) - (j - j')^2 / (2 sigma_x^2))``, normalised over the keys.
Normalised, it is the outer product of a 1D Gaussian over rows and one over columns, so we keep
two small ``(..., H)`` and ``(..., W)`` factors instead of an ``L x L`` matrix.

>>> gy, gx = separable_target(torch.rand(1, 8, 35, 2), height=5, width=7)
>>> gy.shape, gx.shape
(torch.Size([1, 8, 35, 5]), torch.Size([1, 8, 35, 7]))
"""

from __future__ import annotations

import torch
from torch import Tensor


def sigma_from_raw(raw: Tensor) -> Tensor:
    """The authors' map from a raw prediction to a scale: 3^(sigmoid(5 s) + 1e-5) - 1."""
    return torch.pow(3.0, torch.sigmoid(5.0 * raw) + 1e-5) - 1.0


def grid_coordinates(height: int, width: int, device=None, dtype=None) -> tuple[Tensor, Tensor]:
    """Row and column index of every token of a row-major flattened ``height x width`` grid."""
    rows = torch.arange(height, device=device, dtype=dtype).repeat_interleave(width)
    cols = torch.arange(width, device=device, dtype=dtype).repeat(height)
    return rows, cols


def gaussian_1d(sigma: Tensor, centres: Tensor, size: int) -> Tensor:
    """Normalised 1D Gaussians over ``size`` cells.

    ``sigma``: (..., L) scales of L queries; ``centres``: (L,) the query's own cell.
    Returns (..., L, size); each row sums to 1. A softmax keeps it stable for tiny sigma
    (the query's own cell always has weight exp(0) before normalisation).
    """
    cells = torch.arange(size, device=sigma.device, dtype=sigma.dtype)
    sq_dist = (centres.to(sigma.dtype)[:, None] - cells[None, :]) ** 2  # (L, size)
    logits = -sq_dist / (2.0 * sigma.unsqueeze(-1) ** 2)
    return torch.softmax(logits, dim=-1)


def separable_target(sigma: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The two factors of the normalised target for every query of a ``height x width`` grid.

    ``sigma``: (..., L, 2) with ``[..., 0] = sigma_y`` and ``[..., 1] = sigma_x``, L = H * W.
    Returns ``gy`` (..., L, H) and ``gx`` (..., L, W) with ``T[l, (i', j')] = gy[l, i'] gx[l, j']``.
    """
    rows, cols = grid_coordinates(height, width, device=sigma.device)
    gy = gaussian_1d(sigma[..., 0], rows, height)
    gx = gaussian_1d(sigma[..., 1], cols, width)
    return gy, gx
