"""Validation on synthetic anomalies: choices made without a single test label.

After training, the held-out good images (which neither the transformers nor the heads have
seen) get synthetic anomalies (:mod:`fod.data.anomalies`). Good and anomalous versions are
scored, and the result

- weighs the levels and picks the head's parts in the image score: every level weighting on
  a grid (multiples of :data:`WEIGHT_STEP` summing to 1) with every non-empty subset of the
  parts is tried; of those whose image AUROC of good against anomalous images is within one
  standard error of the best, the weighting nearest the plain average (then the one with
  more parts) is kept, and
- sets the decision threshold: the score that best separates the two groups (largest true
  positive rate minus false positive rate; ties go to the highest score, fewer false alarms).

The heat map keeps every part and the plain average of the levels: on MTD the synthetic pixel
AUROC ranked level weights and parts differently from the real defects, while the synthetic
image AUROC ranked them as the real ones did (README, "Why the default is what it is").

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

from fod.batches import map_batches
from fod.config import INFERENCE_BATCH_SIZE, FODConfig
from fod.data import Sample, load_batch
from fod.data.anomalies import synthetic_anomalies
from fod.metrics import pixel_auroc
from fod.metrics.classification import auroc_from_groups
from fod.model import FODTransformer
from fod.scoring.anomaly_map import DEFAULT_SIGMA, anomaly_map, gaussian_blur
from fod.scoring.detector import level_scores, weighted_image_scores
from fod.scoring.head import CalibratedHead
from fod.training.features import image_features

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


def image_weights(levels: Sequence[float], parts: Sequence[bool]) -> list[Tensor]:
    """Each level's (P,) ``image_weight``: its level weight times the number of levels for
    the parts kept, 0 for the others."""
    keep = torch.tensor([1.0 if p else 0.0 for p in parts])
    return [keep * (len(levels) * w) for w in levels]


def choose_image_weighting(
    good: Sequence[Tensor],
    anomalous: Sequence[Tensor],
    parts: Sequence[str],
    size: int,
    sigma: float = DEFAULT_SIGMA,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The level weights and parts chosen to separate ``good`` from ``anomalous`` standardised
    part scores (one (N, P, H_l, W_l) tensor per level each), and the AUROC of every
    combination (rows of ``levels``, ``parts``, ``auroc``).

    One-standard-error rule: of the combinations whose AUROC is within one standard error
    (:func:`auroc_standard_error`) of the best, the one nearest the plain average of the
    levels is kept, then the one with more parts. With few held-out images the AUROCs differ
    by noise, and the choice stays near the default instead of chasing it."""
    n_levels, n_parts = len(good), len(parts)
    uniform = np.full(n_levels, 1.0 / n_levels)
    table, keys, weightings = [], [], []
    for r in range(n_parts, 0, -1):
        for kept in itertools.combinations(range(n_parts), r):
            for levels in weight_grid(n_levels):
                weightings.append(image_weights(levels, [i in kept for i in range(n_parts)]))
                names = [parts[i] for i in kept]
                table.append({"levels": list(levels), "parts": names})
                distance = float(np.abs(np.asarray(levels) - uniform).sum())
                keys.append((-round(distance, 9), r))
    g_all = grid_image_scores(good, weightings, size, sigma)
    a_all = grid_image_scores(anomalous, weightings, size, sigma)
    for row, g, a in zip(table, g_all, a_all, strict=True):
        row["auroc"] = auroc_from_groups(a.double().numpy(), g.double().numpy())
    top = max(row["auroc"] for row in table)
    n_anomalous, n_good = int(anomalous[0].shape[0]), int(good[0].shape[0])
    floor = top - auroc_standard_error(top, n_anomalous, n_good)
    near = [i for i, row in enumerate(table) if row["auroc"] >= floor - 1e-12]
    best = table[max(near, key=lambda i: (keys[i], table[i]["auroc"]))]
    return best, table


@torch.no_grad()
def grid_image_scores(
    scores: Sequence[Tensor],
    weightings: Sequence[Sequence[Tensor]],
    size: int,
    sigma: float = DEFAULT_SIGMA,
    batch_size: int = INFERENCE_BATCH_SIZE,
) -> Tensor:
    """(K, N) image scores of standardised part scores (one (N, P, H_l, W_l) per level) under
    each of K weightings (each a (P,) weight per level), as
    :func:`~fod.scoring.detector.weighted_image_scores` gives them one by one.

    Upsampling and blurring are linear, so each level's parts are upsampled and blurred once
    and every weighting is a weighted sum of those maps before its maximum, instead of K
    upsamplings and blurs per image."""
    n_levels = len(scores)
    weights = torch.stack([torch.cat(list(w)) for w in weightings]) / n_levels  # (K, L * P)
    out = []
    for first in range(0, int(scores[0].shape[0]), batch_size):
        maps = torch.cat(  # (B, L * P, S, S): every level's parts, upsampled and blurred
            [
                gaussian_blur(
                    anomaly_map([z[first : first + batch_size].flatten(0, 1)], size), sigma
                ).view(-1, z.shape[1], size, size)
                for z in scores
            ],
            dim=1,
        )
        w = weights.to(maps.dtype)
        out.append(torch.stack([(maps * k.view(1, -1, 1, 1)).sum(1).flatten(1).amax(1) for k in w]))
    return torch.cat(out, dim=1)


def auroc_standard_error(auroc: float, positives: int, negatives: int) -> float:
    """Standard error of an AUROC from ``positives`` and ``negatives`` scores (Hanley and
    McNeil, Radiology 1982): sqrt((A(1-A) + (n_p-1)(Q1-A^2) + (n_n-1)(Q2-A^2)) / (n_p n_n))
    with Q1 = A / (2 - A) and Q2 = 2A^2 / (1 + A)."""
    a = float(auroc)
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    var = (a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a)) / (
        positives * negatives
    )
    return float(np.sqrt(max(var, 0.0)))


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


def _scores(
    levels: Sequence[FODTransformer],
    heads: Sequence[CalibratedHead],
    features: Sequence[Tensor],
    device: torch.device,
) -> list[Tensor]:
    return map_batches(lambda batch: level_scores(levels, batch, heads), features, device=device)


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
    return the report: the anomalies made, the AUROC of every combination of level weights
    and parts, the chosen one, the synthetic pixel AUROC of the heat map and the separating
    threshold."""
    device = torch.device(device)
    n = int(good_images.shape[0])
    count = max(MIN_ANOMALIES, PER_IMAGE * n)
    images, masks, kinds = synthetic_anomalies(good_images, count, seed)
    good = _scores(levels, heads, good_features, device)
    anomalous = _scores(levels, heads, image_features(backbone, images, device), device)
    parts = heads[0].parts
    best, table = choose_image_weighting(good, anomalous, parts, image_size, sigma)
    weights = image_weights(best["levels"], [p in best["parts"] for p in parts])
    for head, w in zip(heads, weights, strict=True):
        head.image_weight = w.to(head.image_weight.device)
    g_scores = weighted_image_scores(good, weights, image_size, sigma).double().numpy()
    a_scores = weighted_image_scores(anomalous, weights, image_size, sigma).double().numpy()
    k = PIXEL_STRIDE
    maps = torch.cat(
        [
            anomaly_map([z.sum(1) for z in good], image_size),
            anomaly_map([z.sum(1) for z in anomalous], image_size),
        ]
    )
    truth = torch.cat([torch.zeros(n, image_size, image_size, dtype=torch.bool), masks])
    return {
        "good_images": n,
        "anomalies": count,
        "kinds": dict(Counter(kinds)),
        "image_levels": best["levels"],
        "image_parts": best["parts"],
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
    "auroc_standard_error",
    "choose_image_weighting",
    "grid_image_scores",
    "image_weights",
    "separating_threshold",
    "validate",
    "validate_samples",
    "weight_grid",
]
