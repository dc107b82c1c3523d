"""How far a token is from what good images look like: the statistics of the calibrated head.

The paper scores a token by its reconstruction error times an attention factor (spec section
6). On real data the Euclidean error treats every channel alike and throws away how good
images actually vary, so the calibrated head (:mod:`fod.scoring.head`) measures discrepancies
against the variability of good images instead:

- :func:`fit_gaussian` / :func:`mahalanobis`: a Gaussian per grid position, its covariance
  shrunk towards the covariance shared by all positions, so that a few dozen images still give
  a usable estimate (a per-position covariance of C channels needs many more than C images);
  :func:`choose_shrinkage` picks the weight by the likelihood of held-out good images;
- :func:`nearest_distance`: the distance to the nearest of a memory bank of good tokens from
  any position, which needs no alignment between images;
- :func:`memory_bank`: the good tokens the nearest distance searches: half a seeded random
  draw, half chosen to cover the rare ones (``coverage``), or all drawn at random (``random``);
- :func:`local_average`: each token averaged with its neighbours on the grid before the
  nearest search, so a token carries its surroundings. The tokens are already the backbone's
  maps averaged over 3 x 3 positions (the spec's smoothing, PatchCore's local aggregation);
  a second 3 x 3 average describes a 5 x 5 neighbourhood of the map, weighted to its centre.

Everything works on tokens ``(N, L, C)``: N images, L = H W grid positions, C channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fod.config import BANK_SELECTIONS

#: Ridge added to every covariance, as a fraction of the mean channel variance.
RIDGE = 0.01
#: Rounds in which the coverage bank adds the tokens farthest from it.
COVERAGE_ROUNDS = 16
#: Most distances :func:`nearest_distance` holds at once (2 MB in float32).
NEAREST_BLOCK = 1 << 19
#: Bank entries :func:`nearest_distance` compares with at once (96-480 kB at 24-120 channels).
NEAREST_BANK_BLOCK = 1024
#: Shrinkage weights tried by :func:`choose_shrinkage`.
SHRINKAGE_GRID = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


def shrinkage_weight(images: int, channels: int) -> float:
    """Weight of the shared covariance in the per-position estimate.

    A per-position covariance from n images has n - 1 degrees of freedom for C(C+1)/2
    unknowns; the weight C / (C + n - 1) leans on the shared covariance (estimated from all
    L n tokens) when n is small next to C and on each position's own when n is large.
    """
    return float(channels) / float(channels + max(images - 1, 0))


def fit_gaussian(
    tokens: Tensor, shrink: float | None = None, ridge: float = RIDGE
) -> tuple[Tensor, Tensor]:
    """Per-position mean ``(L, C)`` and precision ``(L, C, C)`` of good ``tokens`` (N, L, C).

    Covariance at position l: ``(1 - a) S_l + a S + r I``, with S_l the position's sample
    covariance, S the average of the S_l (the shared part), a = ``shrink`` (default
    :func:`shrinkage_weight`) and r = ``ridge`` times the mean variance. Float64 inside.
    """
    return gaussian_from_moments(gaussian_moments(tokens), shrink, ridge)


#: Float64 per-position mean (L, C) and covariance (L, C, C), the image count and the dtype.
GaussianMoments = tuple[Tensor, Tensor, int, torch.dtype]


def gaussian_moments(tokens: Tensor) -> GaussianMoments:
    """Float64 per-position mean (L, C) and sample covariance (L, C, C) of ``tokens``
    (N, L, C), with N and the tokens' dtype: what every shrinkage weight's Gaussian is made
    from (:func:`gaussian_from_moments`), computed once when several weights are tried."""
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be (N, L, C), got {tuple(tokens.shape)}")
    n = int(tokens.shape[0])
    if n < 2:
        raise ValueError(f"a Gaussian needs at least 2 good images, got {n}")
    x = tokens.double().transpose(0, 1)  # (L, N, C)
    mean = x.mean(1)
    centred = x - mean.unsqueeze(1)
    cov = centred.transpose(1, 2) @ centred / (n - 1)  # (L, C, C)
    return mean, cov, n, tokens.dtype


def gaussian_from_moments(
    moments: GaussianMoments,
    shrink: float | None = None,
    ridge: float = RIDGE,
) -> tuple[Tensor, Tensor]:
    """:func:`fit_gaussian`'s mean and precision from :func:`gaussian_moments`."""
    mean, cov, n, dtype = moments
    c = int(cov.shape[-1])
    a = shrinkage_weight(n, c) if shrink is None else float(shrink)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"shrink must lie in [0, 1], got {shrink}")
    shared = cov.mean(0, keepdim=True)
    cov = (1.0 - a) * cov + a * shared
    level = torch.diagonal(shared[0]).mean().clamp_min(1e-12)
    cov = cov + (ridge * level) * torch.eye(c, dtype=cov.dtype)
    precision = torch.linalg.inv(cov)
    precision = 0.5 * (precision + precision.transpose(1, 2))
    # contiguous, as a loaded model's is: the matmul kernel, and so the rounding, follow the
    # layout, and a saved model must score exactly as the one that was fitted
    return mean.to(dtype).contiguous(), precision.to(dtype).contiguous()


def gaussian_log_likelihood(tokens: Tensor, mean: Tensor, precision: Tensor) -> float:
    """Mean over images and positions of log N(x; mu_l, P_l^-1), up to the constant."""
    d2 = mahalanobis(tokens.double(), mean.double(), precision.double()).pow(2)
    _, logdet = torch.linalg.slogdet(precision.double())  # log det P = -log det Sigma
    return float((-0.5 * d2 + 0.5 * logdet.unsqueeze(0)).mean())


def choose_shrinkage(
    fit_tokens: Tensor,
    holdout_tokens: Tensor,
    grid: tuple[float, ...] = SHRINKAGE_GRID,
    moments: GaussianMoments | None = None,
) -> float:
    """The shrinkage weight whose Gaussian (fitted on ``fit_tokens``) gives the held-out good
    tokens the highest likelihood: near 0 when images are many, near 1 when they are few.
    Ties go to the smaller weight. ``moments``: ``fit_tokens``' :func:`gaussian_moments`
    when the caller has them (they are computed once either way)."""
    best, best_ll = grid[0], -float("inf")
    if moments is None:
        moments = gaussian_moments(fit_tokens)
    for a in grid:
        mean, precision = gaussian_from_moments(moments, shrink=a)
        ll = gaussian_log_likelihood(holdout_tokens, mean, precision)
        if ll > best_ll + 1e-9:
            best, best_ll = a, ll
    return float(best)


def mahalanobis(tokens: Tensor, mean: Tensor, precision: Tensor) -> Tensor:
    """(B, L): sqrt((x - mu_l)^T P_l (x - mu_l)) for ``tokens`` (B, L, C)."""
    y = (tokens - mean.unsqueeze(0)).transpose(0, 1)  # (L, B, C): one batched matmul
    d2 = ((y @ precision) * y).sum(-1).transpose(0, 1)
    return d2.clamp_min(0.0).sqrt()


def local_average(tokens: Tensor, height: int, width: int, size: int) -> Tensor:
    """``tokens`` (N, L, C) on a ``height`` x ``width`` grid, each replaced by the mean of the
    ``size`` x ``size`` tokens centred on it (fewer at the borders: only those on the grid).

    A token alone is one cell of the image; averaged with its neighbours it describes the
    local texture, which is less noisy and shows faint changes over larger regions
    (PatchCore's local aggregation, once more over the already smoothed tokens). ``size`` 1
    returns ``tokens`` unchanged.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the neighbourhood side must be odd and >= 1, got {size}")
    if size == 1:
        return tokens
    n, length, channels = tokens.shape
    if length != height * width:
        raise ValueError(f"{length} tokens do not fill a {height} x {width} grid")
    grid = tokens.transpose(1, 2).reshape(n, channels, height, width)
    pooled = F.avg_pool2d(grid, size, stride=1, padding=size // 2, count_include_pad=False)
    return pooled.flatten(2).transpose(1, 2)


def memory_bank(tokens: Tensor, size: int, seed: int = 0, selection: str = "coverage") -> Tensor:
    """``(M, C)``: ``size`` distinct good tokens of ``tokens`` (N, L, C) (all when fewer), seeded:
    the rows :func:`bank_indices` picks."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    return flat[bank_indices(tokens, size, seed, selection)].clone()


def bank_indices(tokens: Tensor, size: int, seed: int = 0, selection: str = "coverage") -> Tensor:
    """Indices into ``tokens`` (N, L, C) flattened to (N L, C) of a memory bank of ``size``
    distinct good tokens (all when fewer), seeded; entry i comes from image index // L.

    ``random``: drawn without replacement. ``coverage``: half drawn so, the other half added
    in :data:`COVERAGE_ROUNDS` rounds, each adding the tokens farthest from the bank so far
    (a batched form of PatchCore's greedy coreset). A random bank covers where good tokens
    are dense and misses rare good patterns, which then score as defects; the farthest tokens
    are exactly those. The distances to the bank are :func:`nearest_distance`'s.
    """
    if selection not in BANK_SELECTIONS:
        raise ValueError(
            f"bank selection must be one of {', '.join(BANK_SELECTIONS)}, got {selection!r}"
        )
    flat = tokens.reshape(-1, tokens.shape[-1])
    if flat.shape[0] <= size:
        return torch.arange(flat.shape[0])
    gen = torch.Generator().manual_seed(int(seed))
    if selection == "random":
        return torch.randperm(flat.shape[0], generator=gen)[:size]
    half = max(1, size // 2)
    per_round = -(-(size - half) // COVERAGE_ROUNDS)
    x = flat.float()[None]  # one "image" whose grid is every token
    chosen = torch.randperm(flat.shape[0], generator=gen)[:half]
    nearest = nearest_distance(x, x[0, chosen])[0]
    while True:
        nearest[chosen] = -float("inf")  # in the bank: never picked again
        left = size - chosen.numel()
        if left <= 0:
            break
        added = nearest.topk(min(per_round, left)).indices
        chosen = torch.cat([chosen, added])
        torch.minimum(nearest, nearest_distance(x, x[0, added])[0], out=nearest)
    return chosen


def nearest_distance(tokens: Tensor, bank: Tensor, chunk: int | None = None) -> Tensor:
    """(B, L): Euclidean distance of each token to its nearest bank entry.

    Written as ``|x|^2 + min_b (|b|^2 - 2 x.b)`` (no ``cdist``, which ONNX lacks), in blocks
    of ``chunk`` grid positions (all images of the batch together) against
    :data:`NEAREST_BANK_BLOCK` bank entries at a time, keeping the running minimum. Each block
    of distances holds at most :data:`NEAREST_BLOCK` numbers, and each bank block stays in
    cache while all the queries of a position block pass: searching the whole bank for a few
    positions at a time read a bank of 32 768 tokens from memory 64 times per image, which made
    it three times slower than these blocks. A traced graph keeps the chunk of its example
    batch and stays exact for any batch size (the loops run over the grid and the bank).
    """
    length = tokens.shape[1]
    bank_block = max(1, min(int(bank.shape[0]), NEAREST_BANK_BLOCK))
    if chunk is None:
        rows = max(1, NEAREST_BLOCK // bank_block)
        chunk = max(1, min(length, rows // max(1, tokens.shape[0])))
    bank_sq = bank.pow(2).sum(1)
    out = []
    for first in range(0, length, chunk):
        q = tokens[:, first : first + chunk]
        width = q.shape[1]  # fixed by the grid, so the trace holds for any batch size
        flat = q.reshape(-1, q.shape[2])
        best = None
        for start in range(0, bank.shape[0], bank_block):
            part = bank[start : start + bank_block]
            d2 = torch.addmm(bank_sq[start : start + bank_block], flat, part.T, alpha=-2.0)
            d2 = d2.amin(1)
            best = d2 if best is None else torch.minimum(best, d2)
        out.append((best + flat.pow(2).sum(1)).reshape(-1, width))
    return torch.cat(out, 1).clamp_min(0.0).sqrt()


__all__ = [
    "COVERAGE_ROUNDS",
    "NEAREST_BANK_BLOCK",
    "NEAREST_BLOCK",
    "RIDGE",
    "SHRINKAGE_GRID",
    "GaussianMoments",
    "bank_indices",
    "choose_shrinkage",
    "fit_gaussian",
    "gaussian_from_moments",
    "gaussian_log_likelihood",
    "gaussian_moments",
    "local_average",
    "mahalanobis",
    "memory_bank",
    "nearest_distance",
    "shrinkage_weight",
]
