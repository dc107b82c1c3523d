"""The Gaussian parts' shrinkage, chosen by the synthetic validation.

A per-position Gaussian of 48 or 120 channels from a few dozen good images is poorly
estimated, so :func:`~fod.scoring.head.fit_head` shrinks each position's covariance towards
the average one, by the weight that gives held-out good images the highest likelihood. The
likelihood rates how well the Gaussian describes good images, not how well the detector
separates defects from them: with 50 good images of aligned tiles less shrinkage found
defects better, on objects at varying places and angles full shrinkage did (README, "Few good
images"). So the config's ``shrinkage`` ``validation`` (the default) fits the Gaussian parts
of every head again with each weight of :data:`CANDIDATES` (the banks are kept), calibrates
them on the same held-out or out-of-fold images, validates each on the same synthetic
anomalies (:mod:`fod.training.validation`), and keeps the weight whose image score separates
them best, provided it beats the likelihood's weights by more than one standard error of the
paired difference (:func:`~fod.training.validation.paired_auroc_gain`): a few dozen good
images rank near-equal weights by noise (on one 50-image subset of the objects copy a weight
0.001 ahead on the synthetic anomalies lost 0.02 on the real ones), so the likelihood's
choice stands unless the validation is confident.

Every candidate is validated on the same anomalies, and only its Gaussian columns are scored
again: the memory banks are searched once.

>>> chosen, report = validate_shrinkage(config, result, features, backbone, samples)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fod.config import FODConfig
from fod.data import Sample, load_batch
from fod.model import FODOutput, FODTransformer
from fod.scoring.head import (
    GAUSSIAN_PARTS,
    CalibratedHead,
    gaussian_inputs,
    gaussian_part_scores,
    model_outputs,
    with_shrinkage,
)
from fod.scoring.normality import GaussianMoments
from fod.training.crossfit import calibrate_folds, fold_rests, out_of_fold_scores
from fod.training.fit import FitResult
from fod.training.validation import (
    anomaly_sources,
    paired_auroc_gain,
    synthetic_set,
    validate,
)

#: Shrinkage weights tried beside the likelihood's: none (each position its own covariance,
#: with the ridge), a little, half, and full (one covariance shared by every position). The
#: grid of the earlier measurement (README), not tuned.
CANDIDATES: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0)
#: How a weight is chosen: a fixed weight must beat the likelihood's synthetic image AUROC by
#: more than one standard error of the paired difference; of those, the best.
SHRINKAGE_RULE = (
    "the best synthetic image AUROC of the weights that beat the likelihood's by more than one "
    "paired standard error (DeLong), else the likelihood's"
)


@dataclass
class Calibrated:
    """Heads ready to validate: those that score new images, each fold's heads and every
    image's fold when cross-fitted, the calibrating good images' standardised token scores
    (one (N, P, H_l, W_l) per level), and the shrinkage weight they were fitted with (None:
    each Gaussian part's likelihood choice)."""

    heads: list[CalibratedHead]
    scores: list[Tensor]
    fold_heads: list[list[CalibratedHead]] | None = None
    fold_of: Tensor | None = None
    shrinkage: float | None = None

    @property
    def scorers(self) -> list[list[CalibratedHead]]:
        """The heads that score the calibrating images, one set per fold (one for a slice)."""
        return self.fold_heads if self.fold_heads is not None else [self.heads]


@dataclass
class ScoredRows:
    """Rows that every candidate scores: their transformer outputs (one per level), which
    set of :attr:`Calibrated.scorers` scores each (index tensors), and their raw part scores
    under the fit's own heads (one (R, P, L) per level): a candidate changes only the
    Gaussian columns, so neither the memory banks nor the transformers run again."""

    outputs: list[FODOutput]
    groups: list[Tensor]
    raw: list[Tensor]


def fitted(result: FitResult) -> Calibrated:
    """The fit's own heads (likelihood shrinkage); the scores are filled in by the caller."""
    if result.heads is None:
        raise ValueError("the fit has no calibrated heads (the paper's head)")
    crossfit = result.crossfit
    if crossfit is not None:
        return Calibrated(result.heads, crossfit.scores, crossfit.fold_heads, crossfit.fold_of)
    return Calibrated(result.heads, [])


def scored_rows(
    base: Calibrated,
    models: Sequence[FODTransformer],
    features: Sequence[Tensor],
    labels: Tensor,
    device: str | torch.device = "cpu",
    *,
    raw: list[Tensor] | None = None,
    outputs: list[FODOutput] | None = None,
) -> ScoredRows:
    """:class:`ScoredRows` of ``features``, row r scored by the scorers of set ``labels[r]``
    (``raw``: those raw scores, where the fit has them; ``outputs``: the transformer outputs,
    where the caller has them, ``[]`` where no candidate needs them)."""
    groups = [torch.nonzero(labels == j).flatten() for j in range(len(base.scorers))]
    if outputs is None:
        pairs = zip(models, features, strict=True)
        outputs = [model_outputs(m, f, device=device) for m, f in pairs]
    if raw is None:
        paper = "paper" in base.scorers[0][0].parts
        given = outputs if outputs and not paper else None  # the transformers run once
        raw = out_of_fold_scores(base.scorers, groups, models, features, device, given)
    return ScoredRows(outputs, groups, raw)


def fit_moments(
    result: FitResult, every: Sequence[FODOutput], parts: Sequence[str]
) -> list[list[dict[str, GaussianMoments]]]:
    """For each set of scorers (each fold's heads, or the slice's), per level, the
    :func:`~fod.scoring.head.gaussian_inputs` of ``parts`` on the images those heads were
    fitted on, cut from ``every`` good image's :func:`~fod.scoring.head.model_outputs` (one
    per level): computed once, shared by every shrinkage weight tried."""
    if result.crossfit is not None:
        rests = fold_rests(result.crossfit.folds)
    elif result.fit_indices is None:
        raise ValueError("the fit held no images out (the paper's head)")
    else:
        rests = [result.fit_indices]
    return [[gaussian_inputs(parts, o.rows(rest)) for o in every] for rest in rests]


def _standardised(head: CalibratedHead, raw: Tensor) -> Tensor:
    """(R, P, H, W): raw part scores (R, P, L) standardised by ``head``'s calibration."""
    z = (raw - head.center.cpu().view(1, -1, 1)) / head.scale.cpu().view(1, -1, 1)
    return z.reshape(z.shape[0], len(head.parts), head.height, head.width)


def _with_gaussians(rows: ScoredRows, scorers: Sequence[Sequence[CalibratedHead]]) -> list[Tensor]:
    """``rows``' raw scores with the Gaussian columns computed again by ``scorers``."""
    out = []
    for level, (output, raw) in enumerate(zip(rows.outputs, rows.raw, strict=True)):
        raw = raw.clone()
        parts = scorers[0][level].parts
        columns = torch.tensor([i for i, part in enumerate(parts) if part in GAUSSIAN_PARTS])
        for heads, group in zip(scorers, rows.groups, strict=True):
            if group.numel():
                scores = gaussian_part_scores(heads[level], output.rows(group))
                raw[group.unsqueeze(1), columns.unsqueeze(0)] = scores
        out.append(raw)
    return out


def refitted(
    base: Calibrated,
    fits: Sequence[Sequence[Mapping[str, GaussianMoments]]],
    shrink: float,
    good: ScoredRows,
) -> Calibrated:
    """``base``'s scorers with every Gaussian part fitted again with weight ``shrink`` on
    ``fits`` (:func:`fit_moments`), calibrated as the fit calibrated them, on the calibrating
    images ``good``: the held-out slice, or every image out of fold. Cross-fitted, its
    ``heads`` are the first fold's (they share the calibration) until :func:`finalised`
    fits the heads for new images."""
    scorers = [
        [with_shrinkage(h, fit, shrink) for h, fit in zip(heads, fit_set, strict=True)]
        for heads, fit_set in zip(base.scorers, fits, strict=True)
    ]
    raw = _with_gaussians(good, scorers)
    if base.fold_heads is None:
        return Calibrated(scorers[0], calibrate_folds(scorers[0], [], raw), shrinkage=shrink)
    scores = calibrate_folds(scorers[0], scorers[1:], raw)
    return Calibrated(scorers[0], scores, scorers, base.fold_of, shrink)


def finalised(candidate: Calibrated, base: Calibrated, every: Sequence[FODOutput]) -> Calibrated:
    """A cross-fitted :func:`refitted` ``candidate`` with the heads that score new images:
    ``base``'s, their Gaussian parts fitted on ``every`` good image's outputs with the
    candidate's weight, with the folds' calibration and image weights."""
    if candidate.fold_heads is None or candidate.shrinkage is None:
        return candidate
    heads = []
    for head, fold, output in zip(base.heads, candidate.heads, every, strict=True):
        final = with_shrinkage(head, gaussian_inputs(head.parts, output), candidate.shrinkage)
        final.center, final.scale = fold.center.clone(), fold.scale.clone()
        final.image_weight = fold.image_weight.clone()
        heads.append(final)
    return Calibrated(
        heads, candidate.scores, candidate.fold_heads, candidate.fold_of, candidate.shrinkage
    )


def validate_shrinkage(
    config: FODConfig,
    result: FitResult,
    features: Sequence[Tensor],
    backbone: torch.nn.Module,
    samples: Sequence[Sample],
    device: str | torch.device = "cpu",
) -> tuple[Calibrated, dict[str, Any]]:
    """Validate the fit's heads (``samples``: every good image, of which those at
    ``result.holdout_indices`` calibrate, with features ``result.holdout``; ``features``:
    every good image's) and, with ``config.shrinkage`` ``validation`` and a Gaussian part in
    the head, each weight of :data:`CANDIDATES` as well; return the best and its validation
    report, which lists every weight tried (``shrinkage``)."""
    start = time.perf_counter()
    if result.holdout_indices is None:
        raise ValueError("the fit held no images out (the paper's head)")
    n = len(result.holdout_indices)
    sources = anomaly_sources(n, config.seed)  # the held-out images that carry anomalies
    paths = [samples[int(result.holdout_indices[int(i)])].image for i in sources]
    images = load_batch(paths, config.image_size)
    anomalies = synthetic_set(backbone, images, config.seed, config.anomaly_placement, device)
    models = result.models
    base = fitted(result)
    m = int(anomalies.masks.shape[0])
    if base.fold_of is not None:
        good_labels = base.fold_of
        anomaly_labels = base.fold_of[sources[torch.arange(m) % len(sources)]]
    else:
        good_labels = torch.zeros(n, dtype=torch.long)
        anomaly_labels = torch.zeros(m, dtype=torch.long)
    gaussian = any(p in GAUSSIAN_PARTS for p in base.heads[0].parts)
    candidates = CANDIDATES if config.shrinkage == "validation" and gaussian else ()
    # every good image's transformer outputs, which the candidates' Gaussians are fitted on;
    # the held-out images' are cut from them (cross-fitted, the held-out images are all)
    if not candidates:
        every = []
    elif result.crossfit is not None and result.crossfit.outputs is not None:
        every = result.crossfit.outputs  # cross-fitting ran the transformers once already
    else:
        every = [model_outputs(m, f, device=device) for m, f in zip(models, features, strict=True)]
    if result.crossfit is not None or not candidates:
        held_outputs = every
    else:
        held_outputs = [o.rows(result.holdout_indices) for o in every]
    own = result.crossfit.raw if result.crossfit is not None else None
    good = scored_rows(
        base, models, result.holdout, good_labels, device, raw=own, outputs=held_outputs
    )
    anomalous = scored_rows(
        base, models, anomalies.features, anomaly_labels, device, outputs=None if candidates else []
    )
    if not base.scores:
        base.scores = [_standardised(h, r) for h, r in zip(base.heads, good.raw, strict=True)]

    def run(candidate: Calibrated, anomaly_raw: list[Tensor]) -> dict[str, Any]:
        return validate(
            candidate.heads,
            anomalies,
            candidate.scores,
            [_standardised(h, r) for h, r in zip(candidate.heads, anomaly_raw, strict=True)],
            config.image_size,
            rule=config.image_rule,
            band_members=config.band_members,
        )

    best, report = base, run(base, anomalous.raw)
    first = report.pop("image_scores")
    if candidates:
        tried = [{"shrinkage": "likelihood", "image_auroc": report["image_auroc"]}]
        fits = fit_moments(result, every, base.heads[0].parts)
        for weight in candidates:
            candidate = refitted(base, fits, weight, good)
            candidate_report = run(candidate, _with_gaussians(anomalous, candidate.scorers))
            scores = candidate_report.pop("image_scores")
            gain, error = paired_auroc_gain(
                scores["anomalous"], scores["good"], first["anomalous"], first["good"]
            )
            auroc = candidate_report["image_auroc"]
            tried.append(
                {"shrinkage": weight, "image_auroc": auroc, "gain": gain, "standard_error": error}
            )
            if gain > error and auroc > report["image_auroc"] + 1e-12:
                best, report = candidate, candidate_report
        if best is not base:
            best = finalised(best, base, every)
        chosen = "likelihood" if best.shrinkage is None else best.shrinkage
        report["shrinkage"] = {"rule": SHRINKAGE_RULE, "chosen": chosen, "tried": tried}
    report["anomaly_images"] = len(sources)
    report["seconds"] = time.perf_counter() - start
    return best, report


__all__ = [
    "CANDIDATES",
    "SHRINKAGE_RULE",
    "Calibrated",
    "ScoredRows",
    "finalised",
    "fit_moments",
    "fitted",
    "refitted",
    "scored_rows",
    "validate_shrinkage",
]
