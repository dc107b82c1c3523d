"""`fod bench baselines`: training-free scorers on the very features FOD is trained on.

They answer two questions a FOD result alone cannot: do the features carry the defects at all
(if a nearest-neighbour or Gaussian scorer finds them, they do), and has training taught the
transformers more than the per-position mean of the training set (the "mean" scorer is what a
reconstruction that has learnt nothing but the average would give). Every scorer sees the same
backbone, input size and pooled maps as FOD, and goes through the same heat-map pipeline
(bilinear upsampling, level average, blurred maximum) and the same metrics.

- ``mean``: squared distance to the per-position mean of the training maps, averaged over
  channels.
- ``gaussian``: Mahalanobis distance to a per-position Gaussian with PaDiM's absolute ridge
  of 0.01 on the covariance and no shrinkage (the PaDiM idea, without its random channel
  subset); the distance is the calibrated head's (:func:`fod.scoring.normality.mahalanobis`).
- ``nearest``: Euclidean distance to the nearest training patch of the same level, searched
  in a random subsample of all training patches (the PatchCore idea, without its coreset).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fod.scoring import normality
from fod.scoring.anomaly_map import anomaly_map, image_scores
from fod.scoring.normality import memory_bank

BASELINES = ("mean", "gaussian", "nearest")
DEFAULT_RIDGE = 0.01
DEFAULT_BANK = 40_000


def _check(train: Tensor, test: Tensor) -> None:
    if train.dim() != 4 or test.dim() != 4 or train.shape[1:] != test.shape[1:]:
        raise ValueError(
            f"train and test maps must be (N, C, H, W) with equal C, H, W; got "
            f"{tuple(train.shape)} and {tuple(test.shape)}"
        )
    if train.shape[0] == 0:
        raise ValueError("no training maps")


def mean_distance(train: Tensor, test: Tensor) -> Tensor:
    """(N, H, W): mean over channels of (x - mean of the training maps at that position)^2."""
    _check(train, test)
    return (test - train.mean(0, keepdim=True)).pow(2).mean(1)


def gaussian_distance(train: Tensor, test: Tensor, ridge: float = DEFAULT_RIDGE) -> Tensor:
    """(N, H, W): Mahalanobis distance to each position's Gaussian, covariance + ridge * I."""
    _check(train, test)
    if train.shape[0] < 2:
        raise ValueError("a Gaussian per position needs at least 2 training maps")
    n, c, h, w = train.shape
    x = train.double().permute(2, 3, 0, 1).reshape(h * w, n, c)
    mu = x.mean(1, keepdim=True)
    xc = x - mu
    cov = xc.transpose(1, 2) @ xc / (n - 1)
    cov = cov + ridge * torch.eye(c, dtype=cov.dtype)
    precision = torch.linalg.inv(cov)
    tokens = test.double().flatten(2).transpose(1, 2)  # (N, H*W, C), row-major positions
    d = normality.mahalanobis(tokens, mu.squeeze(1), precision)
    return d.reshape(-1, h, w).to(test.dtype)


def nearest_distance(
    train: Tensor,
    test: Tensor,
    bank_size: int = DEFAULT_BANK,
    seed: int = 0,
    chunk: int | None = None,
    selection: str = "random",
) -> Tensor:
    """(N, H, W): distance of each test patch to the nearest of ``bank_size`` training patches
    drawn at random (seeded) from all positions of all training maps (all of them if fewer);
    ``selection="coverage"`` picks them as the calibrated head's bank does
    (:func:`fod.scoring.normality.memory_bank`)."""
    _check(train, test)
    h, w = train.shape[2:]
    bank = memory_bank(train.flatten(2).transpose(1, 2), bank_size, seed, selection)
    distances = normality.nearest_distance(test.flatten(2).transpose(1, 2), bank, chunk)
    return distances.reshape(-1, h, w)


SCORERS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mean": mean_distance,
    "gaussian": gaussian_distance,
    "nearest": nearest_distance,
}


def score_baseline(
    name: str, train: Sequence[Tensor], test: Sequence[Tensor], image_size: int
) -> tuple[Tensor, Tensor]:
    """Heat maps (N, S, S) and image scores (N,) of baseline ``name`` over all feature levels."""
    if name not in SCORERS:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    if len(train) != len(test):
        raise ValueError(f"{len(train)} training levels but {len(test)} test levels")
    levels = [SCORERS[name](a, b) for a, b in zip(train, test, strict=True)]
    maps = anomaly_map(levels, image_size)
    return maps, image_scores(maps)


def run_baselines(
    root: str | Path,
    image_size: int = 256,
    backbone: str = "efficientnet_lite2",
    weights: str | None = None,
    layers: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    baselines: Sequence[str] = BASELINES,
    layout: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Score every category under ``root`` with each baseline: ``{"categories": {name:
    {baseline: metrics}}, "settings": ...}``, the metrics as :func:`fod.metrics.evaluate`."""
    from fod.backbone import create_backbone
    from fod.data import find_categories
    from fod.evaluation import category_features
    from fod.report import metrics_line

    extractor = create_backbone(backbone, weights, layers)
    results: dict[str, Any] = {}
    for category in find_categories(root, layout):
        features = category_features(category, extractor, image_size, cache_dir, progress=progress)
        per: dict[str, Any] = {}
        for name in baselines:
            t0 = time.perf_counter()
            maps, scores = score_baseline(name, features.train, features.test, image_size)
            metrics = features.evaluate(maps, scores)
            metrics["seconds"] = time.perf_counter() - t0
            per[name] = metrics
            log(f"{category.name} {name}: {metrics_line(metrics)}")
        results[category.name] = per
    settings = {
        "backbone": extractor.describe(),
        "image_size": int(image_size),
        "ridge": DEFAULT_RIDGE,
        "bank_size": DEFAULT_BANK,
    }
    return {"categories": results, "settings": settings}


def format_table(report: dict[str, Any]) -> str:
    """One Markdown row per (category, baseline)."""
    from fod.report import markdown_table

    columns = [("category", "category"), ("baseline", "baseline")]
    columns += [("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO")]
    rows = [
        {"category": category, "baseline": name, **metrics}
        for category, per in report["categories"].items()
        for name, metrics in per.items()
    ]
    return markdown_table(rows, columns).rstrip("\n")


__all__ = [
    "BASELINES",
    "format_table",
    "gaussian_distance",
    "mean_distance",
    "nearest_distance",
    "run_baselines",
    "score_baseline",
]
