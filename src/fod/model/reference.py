"""Reference features for the inter branch (spec section 3).

The mean reference is the per-position mean of the training feature maps. The coreset
reference (the ablation's "Coreset" row) picks k whole training maps by greedy k-center
selection on their flattened features; every token keeps its grid position, so a query's
target spreads over the same neighbourhood in each of the k maps.

>>> mean_reference(torch.randn(10, 12, 5, 7)).shape
torch.Size([1, 12, 5, 7])
"""

from __future__ import annotations

import torch
from torch import Tensor


def mean_reference(features: Tensor) -> Tensor:
    """(N, C, H, W) training features -> (1, C, H, W) per-position mean (float64 accumulation)."""
    if features.shape[0] == 0:
        raise ValueError("the reference needs at least one training feature map")
    return features.double().mean(0, keepdim=True).to(features.dtype)


def greedy_k_center(points: Tensor, k: int, start: int = 0) -> list[int]:
    """Indices of k points chosen by greedy farthest-point (k-center) selection."""
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"coreset size must be between 1 and the number of maps ({n}), got {k}")
    chosen = [start]
    dist = torch.cdist(points, points[start : start + 1]).squeeze(1)
    for _ in range(k - 1):
        nxt = int(torch.argmax(dist))
        chosen.append(nxt)
        dist = torch.minimum(dist, torch.cdist(points, points[nxt : nxt + 1]).squeeze(1))
    return chosen


def coreset_reference(features: Tensor, k: int) -> Tensor:
    """(N, C, H, W) -> (k, C, H, W): k training maps by greedy k-center, starting at the map
    closest to the mean (deterministic, no random start)."""
    flat = features.flatten(1).double()
    start = int(torch.argmin(torch.cdist(flat, flat.mean(0, keepdim=True)).squeeze(1)))
    return features[greedy_k_center(flat, k, start)].clone()
