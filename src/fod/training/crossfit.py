"""Cross-fitted calibration (the default): every good image held out once.

The calibrated head needs good images its statistics have not seen: they set each part's
centre and scale, and the synthetic validation makes its anomalies on them and uses them as
its good examples. A held-out slice of a fifth takes a fifth of the images from the
transformers and the heads and leaves the validation a fifth as its good examples: with 50
images, 10, too few to rank anything; on MTD (761) 152, where cross-fitting raised the image
AUROC of three seeds by 0.005 on average. Cross-fitting splits the good images into folds
(``round(1 / holdout)``, 5 at the default), fits each fold's heads on the other folds and
scores the fold with them, so every image gets an out-of-fold score. Those scores calibrate
every part; each anomaly of the validation is scored by the heads of the fold its image
belongs to; the shrinkage of a Gaussian part is the mean of the folds' choices. The
transformers and the heads that score new images are fitted on every good image, with that
calibration. The memory banks are selected once, from every image, and each fold's heads
keep the entries of the other folds' images (:func:`fold_banks`): a coverage selection
searches every token against the bank, and with one per fold the five folds' head fits took
400 of a cross-fitted MTD run's 1 515 seconds (761 images), most of it selecting banks. The
transformers, fixed by then, run once over every image, and each fit takes its slice of
their outputs. What remains is a Gaussian fit and an out-of-fold scoring per fold:
cross-fitting is the default on any number of images, and ``auto`` keeps the slice where it
would hold enough images for the validation (:func:`resolve_calibration`), for a shorter
run. The heat-map colour range is taken from these images' maps; the segmenter, which keeps
a plain split (the first fold held out), has seen the other folds.

>>> crossfit = crossfit_heads(config, models, features)   # features: one (N, C, H, W) per level
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fod.config import CALIBRATIONS, FODConfig, check_choice
from fod.model import FODOutput, FODTransformer
from fod.scoring.head import (
    CalibratedHead,
    bank_entries,
    calibrate_head,
    fit_head,
    model_outputs,
    raw_part_scores,
)
from fod.training.validation import BAND_MIN_HELDOUT


def holdout_count(n: int, fraction: float) -> int:
    """Images a held-out slice of ``fraction`` takes from ``n``: round(fraction n), at least
    1 and at most n - 2 (two are needed to fit)."""
    return min(n - 2, max(1, round(fraction * n)))


def resolve_calibration(calibration: str, n: int, fraction: float) -> str:
    """``holdout`` or ``crossfit`` for ``n`` good images: ``auto`` cross-fits when the slice
    (:func:`holdout_count`) would hold fewer than
    :data:`~fod.training.validation.BAND_MIN_HELDOUT` images, the number from which the
    validation's ranking of weightings is trusted."""
    if check_choice("calibration", calibration, CALIBRATIONS) != "auto":
        return calibration
    return "crossfit" if holdout_count(n, fraction) < BAND_MIN_HELDOUT else "holdout"


def fold_count(n: int, fraction: float) -> int:
    """Folds for ``n`` images and a held-out ``fraction``: round(1 / fraction), at least 2
    and at most n (each fold holds at least one image)."""
    return max(2, min(n, round(1.0 / fraction)))


def image_order(n: int, seed: int) -> Tensor:
    """The seeded permutation of range(n) that both the held-out slice and the folds are cut
    from (the same seed gives the same order everywhere)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7919))


def make_folds(n: int, k: int, seed: int) -> list[Tensor]:
    """``k`` disjoint sorted index tensors that cover range(n), sizes differing by at most
    one, from a seeded permutation (the same seed gives the same folds everywhere)."""
    if not 2 <= k <= n:
        raise ValueError(f"cannot split {n} images into {k} folds")
    order = image_order(n, seed)
    return [order[j::k].sort().values for j in range(k)]


def fold_rests(folds: Sequence[Tensor]) -> list[Tensor]:
    """For each fold, the sorted indices of every other fold: the images its heads fit on."""
    return [
        torch.cat([f for i, f in enumerate(folds) if i != j]).sort().values
        for j in range(len(folds))
    ]


@dataclass
class CrossFit:
    """The heads that score new images (fitted on every image, calibrated out of fold), each
    fold's heads (with the same calibration), the folds, the fold of every image, and the
    images' out-of-fold standardised token scores, one (N, P, H_l, W_l) tensor per level,
    the raw scores they were standardised from, one (N, P, L) per level, and every image's
    transformer outputs, one per level (None with the paper part, whose scores need more)."""

    heads: list[CalibratedHead]
    fold_heads: list[list[CalibratedHead]]
    folds: list[Tensor]
    fold_of: Tensor
    scores: list[Tensor]
    raw: list[Tensor]
    outputs: list[FODOutput] | None = None


def crossfit_heads(
    config: FODConfig,
    models: Sequence[FODTransformer],
    features: Sequence[Tensor],
    device: str | torch.device = "cpu",
) -> CrossFit:
    """Cross-fitted heads (see the module) for ``models`` trained on all of ``features``."""
    n = int(features[0].shape[0])
    folds = make_folds(n, fold_count(n, config.holdout), config.seed)
    fold_of = torch.empty(n, dtype=torch.long)
    for j, idx in enumerate(folds):
        fold_of[idx] = j
    options = {
        "seed": config.seed,
        "device": device,
        "bank_selection": config.bank_selection,
        "pool": config.nearest_pool,
        "pooled_bank_size": config.pooled_bank_size,
    }
    # the transformers are fixed: run them once over every image, for every fit below
    outputs: list[FODOutput] | None = None
    if "paper" not in config.head_parts:
        outputs = [
            model_outputs(model, f, device=device)
            for model, f in zip(models, features, strict=True)
        ]
    shared = outputs if outputs is not None else [None] * len(models)
    # the banks are selected once, from every image; each fold drops its own images' entries
    banks = [
        bank_entries(config.head_parts, model, f, config.bank_size, outputs=o, **options)
        for model, f, o in zip(models, features, shared, strict=True)
    ]
    fold_heads = [
        [
            fit_head(
                config.head_parts,
                model,
                f[rest],
                f[held],
                config.bank_size,
                banks=fold_banks(bank, fold_of, j),
                outputs=None if o is None else (o.rows(rest), o.rows(held)),
                **options,
            )
            for model, f, bank, o in zip(models, features, banks, shared, strict=True)
        ]
        for j, (rest, held) in enumerate(zip(fold_rests(folds), folds, strict=True))
    ]
    raw = out_of_fold_scores(fold_heads, folds, models, features, device, outputs)
    final = []
    for level, (model, f) in enumerate(zip(models, features, strict=True)):
        shrinkage = {
            name: sum(h[level].shrinkage[name] for h in fold_heads) / len(fold_heads)
            for name in fold_heads[0][level].shrinkage
        }
        final.append(
            fit_head(
                config.head_parts,
                model,
                f,
                None,
                config.bank_size,
                shrinkage=shrinkage,
                banks={part: entries for part, (entries, _) in banks[level].items()},
                outputs=None if outputs is None else (outputs[level], None),
                **options,
            )
        )
    scores = calibrate_folds(final, fold_heads, raw)
    return CrossFit(final, fold_heads, folds, fold_of, scores, raw, outputs)


def fold_banks(
    banks: Mapping[str, tuple[Tensor, Tensor]], fold_of: Tensor, fold: int
) -> dict[str, Tensor]:
    """``banks`` (per part: entries and the image each comes from) without the entries of the
    images of ``fold`` (``fold_of``: every image's fold): a fold's heads must not find its
    own images in their banks. A part left with no entry is omitted (the fold's head then
    selects that bank from its own images)."""
    kept = {part: entries[fold_of[source] != fold] for part, (entries, source) in banks.items()}
    return {part: entries for part, entries in kept.items() if entries.shape[0]}


def out_of_fold_scores(
    fold_heads: Sequence[Sequence[CalibratedHead]],
    folds: Sequence[Tensor],
    models: Sequence[FODTransformer],
    features: Sequence[Tensor],
    device: str | torch.device = "cpu",
    outputs: Sequence[FODOutput] | None = None,
) -> list[Tensor]:
    """Per level, the (N, P, L) raw part scores of every image by the heads of its fold
    (``outputs``: the features' :func:`~fod.scoring.head.model_outputs`, when at hand)."""
    n = int(features[0].shape[0])
    raw = []
    for level, (model, f) in enumerate(zip(models, features, strict=True)):
        out: Tensor | None = None
        for heads, held in zip(fold_heads, folds, strict=True):
            if not held.numel():  # a group no row belongs to (the validation's subset)
                continue
            given = None if outputs is None else outputs[level].rows(held)
            scores = raw_part_scores(heads[level], model, f[held], device=device, outputs=given)
            if out is None:
                out = torch.empty(n, *scores.shape[1:])
            out[held] = scores
        assert out is not None
        raw.append(out)
    return raw


def calibrate_folds(
    heads: Sequence[CalibratedHead],
    fold_heads: Sequence[Sequence[CalibratedHead]],
    raw: Sequence[Tensor],
) -> list[Tensor]:
    """Calibrate ``heads`` and every fold's heads on the out-of-fold ``raw`` part scores (one
    (N, P, L) per level) and return those scores standardised, one (N, P, H_l, W_l) each."""
    scores = []
    for level, head in enumerate(heads):
        for h in [head, *(fold[level] for fold in fold_heads)]:
            calibrate_head(h, raw[level])
        z = (raw[level] - head.center.cpu().view(1, -1, 1)) / head.scale.cpu().view(1, -1, 1)
        scores.append(z.reshape(z.shape[0], len(head.parts), head.height, head.width))
    return scores


__all__ = [
    "CrossFit",
    "calibrate_folds",
    "crossfit_heads",
    "fold_banks",
    "fold_count",
    "fold_rests",
    "holdout_count",
    "image_order",
    "make_folds",
    "out_of_fold_scores",
    "resolve_calibration",
]
