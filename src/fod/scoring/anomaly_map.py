"""Per-level token scores -> one S x S heat map per image -> one score per image (spec section 6).

Each level's (H_l, W_l) map is upsampled bilinearly (``align_corners=False``) to S x S and the
levels are averaged; pixel metrics use this map as it is. The image score is the maximum of the
map after a Gaussian blur with sigma 4 pixels, the blur of ``scipy.ndimage.gaussian_filter``
(kernel truncated at 4 sigma, "reflect" borders that repeat the edge pixel) written with two
1D ``conv2d`` passes so the whole scorer traces and exports to ONNX. Where only the blurred
map is wanted (the image scores), upsampling and blurring are one linear map per axis,
:func:`smoothing_matrix`, applied as two small matrix products: the same values, about twenty
times faster on a CPU than upsampling to S x S and convolving.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_SIGMA = 4.0
TRUNCATE = 4.0


def anomaly_map(level_scores: Sequence[Tensor], size: int | tuple[int, int]) -> Tensor:
    """(B, H_l, W_l) per level -> (B, S, S): bilinear upsampling, then the mean over levels."""
    if len(level_scores) == 0:
        raise ValueError("anomaly_map needs at least one level of scores")
    out_size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    total = None
    for scores in level_scores:
        if scores.dim() != 3:
            raise ValueError(f"level scores must be (B, H, W), got {tuple(scores.shape)}")
        up = F.interpolate(scores.unsqueeze(1), size=out_size, mode="bilinear", align_corners=False)
        total = up if total is None else total + up
    return (total / len(level_scores)).squeeze(1)


def gaussian_kernel(sigma: float, truncate: float = TRUNCATE) -> Tensor:
    """Normalised 1D Gaussian of radius ``int(truncate * sigma + 0.5)`` (scipy's choice)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return k / k.sum()


def reflect_indices(n: int, radius: int) -> Tensor:
    """Indices of a length-n axis padded by ``radius`` on both sides, scipy "reflect" style
    (d c b a | a b c d | d c b a), folding as often as needed when radius exceeds n."""
    i = torch.arange(-radius, n + radius)
    period = 2 * n
    j = torch.remainder(i, period)
    return torch.where(j >= n, period - 1 - j, j)


def gaussian_blur(maps: Tensor, sigma: float = DEFAULT_SIGMA) -> Tensor:
    """Blur (B, H, W) maps like ``scipy.ndimage.gaussian_filter(m, sigma, mode="reflect",
    truncate=4.0)`` per image; the padding is a fixed gather, so tracing keeps it exact."""
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, H, W), got {tuple(maps.shape)}")
    kernel = gaussian_kernel(sigma).to(device=maps.device, dtype=maps.dtype)
    radius = (kernel.numel() - 1) // 2
    h, w = int(maps.shape[-2]), int(maps.shape[-1])
    x = maps.unsqueeze(1)
    rows = reflect_indices(h, radius).to(maps.device)
    cols = reflect_indices(w, radius).to(maps.device)
    x = x.index_select(2, rows)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    x = x.index_select(3, cols)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return x.squeeze(1)


@lru_cache(maxsize=32)
def _smoothing_matrix(n: int, size: int, sigma: float) -> Tensor:
    # column j: the unit vector e_j as a 1 x n map, upsampled and blurred by the functions
    # above (a 1-pixel axis passes the blur unchanged)
    units = torch.eye(n, dtype=torch.float64).unsqueeze(1)  # (n, 1, n)
    return gaussian_blur(anomaly_map([units], (1, size)), sigma).squeeze(1).T


def smoothing_matrix(n: int, size: int, sigma: float = DEFAULT_SIGMA) -> Tensor:
    """(size, n) float64 matrix of one axis's bilinear upsampling (``align_corners=False``)
    from n to ``size`` followed by :func:`gaussian_blur`'s 1D blur along it: both are linear
    and act on each axis apart, so ``A_h @ z @ A_w.T`` is the blurred upsampled map."""
    if n < 1 or size < 1:
        raise ValueError(f"cannot upsample {n} to {size}")
    return _smoothing_matrix(int(n), int(size), float(sigma))


def blurred_upsample(scores: Tensor, size: int, sigma: float = DEFAULT_SIGMA) -> Tensor:
    """(..., H, W) -> (..., S, S): ``gaussian_blur(anomaly_map([scores], size), sigma)`` for
    every leading index, as two matrix products with :func:`smoothing_matrix`."""
    if scores.dim() < 2:
        raise ValueError(f"scores must be (..., H, W), got {tuple(scores.shape)}")
    h, w = int(scores.shape[-2]), int(scores.shape[-1])
    rows = smoothing_matrix(h, size, sigma).to(device=scores.device, dtype=scores.dtype)
    cols = smoothing_matrix(w, size, sigma).to(device=scores.device, dtype=scores.dtype)
    return torch.matmul(torch.matmul(rows, scores), cols.T)


def image_scores(maps: Tensor, sigma: float = DEFAULT_SIGMA) -> Tensor:
    """(B, S, S) -> (B,): the maximum of each blurred map."""
    return gaussian_blur(maps, sigma).flatten(1).amax(dim=1)


__all__ = [
    "DEFAULT_SIGMA",
    "anomaly_map",
    "blurred_upsample",
    "gaussian_blur",
    "gaussian_kernel",
    "image_scores",
    "reflect_indices",
    "smoothing_matrix",
]
