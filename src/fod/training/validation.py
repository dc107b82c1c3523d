"""Validation on synthetic anomalies: choices made without a single test label.

After training, the held-out good images (which neither the transformers nor the heads have
seen) get synthetic anomalies (:mod:`fod.data.anomalies`). Good and anomalous versions are
scored, and the result

- weighs the levels in the image score: every weighting on a grid (multiples of
  :data:`WEIGHT_STEP` summing to 1) is tried and the one with the highest image AUROC of good
  against anomalous images is kept (ties go to the weighting nearest the plain average), and
- sets the decision threshold: the score that best separates the two groups (largest true
  positive rate minus false positive rate; ties go to the highest score, fewer false alarms).

The heat map keeps the plain average of the levels: on MTD the synthetic pixel AUROC ranked
level weights and parts differently from the real defects, while the synthetic image AUROC
ranked them as the real ones did (README, "Why the default is what it is").

>>> report = validate(levels, heads, backbone, good_images, good_features, image_size=256)
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fod.config import INFERENCE_BATCH_SIZE, FODConfig
from fod.data import Sample, load_batch
from fod.data.anomalies import synthetic_anomalies
from fod.metrics import pixel_auroc
from fod.metrics.classification import auroc_from_groups
from fod.model import FODTransformer
from fod.scoring.anomaly_map import DEFAULT_SIGMA, anomaly_map, image_scores
from fod.scoring.detector import level_scores
from fod.scoring.head import CalibratedHead

#: Level weights are multiples of this step.
WEIGHT_STEP = 0.25
#: Fewest synthetic anomalies a validation makes; beyond, two per held-out image.
MIN_ANOMALIES = 64
PER_IMAGE = 2
#: Every PIXEL_STRIDE-th row and column enters the (reported) synthetic pixel AUROC.
PIXEL_STRIDE = 4
THRESHOLD_RULE = "best separation of held-out good images from synthetic anomalies"


def weight_grid(levels: int, step: float = WEIGHT_STEP) -> list[tuple[float, ...]]:
    """All level weightings whose weights are multiples of ``step`` and sum to 1."""
    units = round(1.0 / step)
    if levels < 1 or abs(units * step - 1.0) > 1e-9:
        raise ValueError(f"need levels >= 1 and 1/step whole, got {levels} and {step}")
    grid = [
        tuple(c * step for c in combo)
        for combo in itertools.product(range(units + 1), repeat=levels)
        if sum(combo) == units
    ]
    return sorted(grid, reverse=True)


def weighted_image_scores(
    scores: Sequence[Tensor], weights: Sequence[float], size: int, sigma: float = DEFAULT_SIGMA
) -> Tensor:
    """Image scores of the level scores weighted by ``weights`` (which sum to 1)."""
    n = len(scores)
    return image_scores(
        anomaly_map([s * (n * w) for s, w in zip(scores, weights, strict=True)], size), sigma
    )


def choose_image_weights(
    good: Sequence[Tensor],
    anomalous: Sequence[Tensor],
    size: int,
    sigma: float = DEFAULT_SIGMA,
) -> tuple[tuple[float, ...], list[dict[str, Any]]]:
    """The level weighting whose image scores best separate ``good`` from ``anomalous``
    level scores (one (N, H_l, W_l) tensor per level each), and the AUROC of every weighting."""
    uniform = np.full(len(good), 1.0 / len(good))
    table = []
    for weights in weight_grid(len(good)):
        g = weighted_image_scores(good, weights, size, sigma).double().numpy()
        a = weighted_image_scores(anomalous, weights, size, sigma).double().numpy()
        distance = float(np.abs(np.asarray(weights) - uniform).sum())
        table.append({"weights": list(weights), "auroc": auroc_from_groups(a, g), "_d": distance})
    best = max(table, key=lambda row: (row["auroc"], -row["_d"]))
    for row in table:
        del row["_d"]
    return tuple(best["weights"]), table


def separating_threshold(good: np.ndarray, anomalous: np.ndarray) -> float:
    """The threshold t (anomalous: score > t) among the good scores that maximises
    TPR - FPR; ties go to the highest t. With separable groups: the largest good score."""
    good = np.sort(np.asarray(good, dtype=np.float64))
    anomalous = np.sort(np.asarray(anomalous, dtype=np.float64))
    candidates = np.unique(good)
    fpr = 1.0 - np.searchsorted(good, candidates, side="right") / good.size
    tpr = 1.0 - np.searchsorted(anomalous, candidates, side="right") / anomalous.size
    gain = tpr - fpr
    best = np.flatnonzero(gain >= gain.max() - 1e-12)
    return float(candidates[best[-1]])


@torch.no_grad()
def _scores(
    levels: Sequence[FODTransformer],
    heads: Sequence[CalibratedHead],
    features: Sequence[Tensor],
    device: torch.device,
) -> list[Tensor]:
    n, out = int(features[0].shape[0]), []
    for first in range(0, n, INFERENCE_BATCH_SIZE):
        batch = [f[first : first + INFERENCE_BATCH_SIZE].to(device) for f in features]
        out.append([s.cpu() for s in level_scores(levels, batch, heads)])
    return [torch.cat([b[i] for b in out]) for i in range(len(features))]


@torch.no_grad()
def _backbone_features(
    backbone: torch.nn.Module, images: Tensor, device: torch.device
) -> list[Tensor]:
    parts = []
    for first in range(0, images.shape[0], INFERENCE_BATCH_SIZE):
        parts.append(
            [f.cpu() for f in backbone(images[first : first + INFERENCE_BATCH_SIZE].to(device))]
        )
    return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]


def validate(
    levels: Sequence[FODTransformer],
    heads: Sequence[CalibratedHead],
    backbone: torch.nn.Module,
    good_images: Tensor,
    good_features: Sequence[Tensor],
    image_size: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    sigma: float = DEFAULT_SIGMA,
) -> dict[str, Any]:
    """Set each head's ``image_weight`` from synthetic anomalies on ``good_images`` (the
    held-out images, (N, 3, S, S) in [0, 1], with their backbone ``good_features``) and
    return the report: the anomalies made, the AUROC of every level weighting, the chosen
    weights, the synthetic pixel AUROC of the heat map and the separating threshold."""
    device = torch.device(device)
    n = int(good_images.shape[0])
    count = max(MIN_ANOMALIES, PER_IMAGE * n)
    images, masks, kinds = synthetic_anomalies(good_images, count, seed)
    good = _scores(levels, heads, good_features, device)
    anomalous = _scores(levels, heads, _backbone_features(backbone, images, device), device)
    weights, table = choose_image_weights(good, anomalous, image_size, sigma)
    for head, w in zip(heads, weights, strict=True):
        head.image_weight = torch.tensor(len(heads) * w, device=head.image_weight.device)
    g_scores = weighted_image_scores(good, weights, image_size, sigma).double().numpy()
    a_scores = weighted_image_scores(anomalous, weights, image_size, sigma).double().numpy()
    k = PIXEL_STRIDE
    maps = torch.cat([anomaly_map(good, image_size), anomaly_map(anomalous, image_size)])
    truth = torch.cat([torch.zeros(n, image_size, image_size, dtype=torch.bool), masks])
    return {
        "good_images": n,
        "anomalies": count,
        "kinds": dict(Counter(kinds)),
        "image_weights": list(weights),
        "image_auroc": auroc_from_groups(a_scores, g_scores),
        "weightings": table,
        "pixel_auroc": pixel_auroc(truth[:, ::k, ::k].numpy(), maps[:, ::k, ::k].numpy()),
        "threshold": separating_threshold(g_scores, a_scores),
        "threshold_rule": THRESHOLD_RULE,
    }


def validate_samples(
    levels: Sequence[FODTransformer],
    heads: Sequence[CalibratedHead],
    backbone: torch.nn.Module,
    samples: Sequence[Sample],
    features: Sequence[Tensor],
    config: FODConfig,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """:func:`validate` on held-out ``samples`` (read from disk at ``config.image_size``)
    whose backbone ``features`` are at hand; the report also gives its ``seconds``."""
    start = time.perf_counter()
    images = load_batch([s.image for s in samples], config.image_size)
    report = validate(
        levels, heads, backbone, images, features, config.image_size, config.seed, device
    )
    report["seconds"] = time.perf_counter() - start
    return report


__all__ = [
    "MIN_ANOMALIES",
    "THRESHOLD_RULE",
    "WEIGHT_STEP",
    "choose_image_weights",
    "separating_threshold",
    "validate",
    "validate_samples",
    "weight_grid",
    "weighted_image_scores",
]
