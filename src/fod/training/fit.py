"""A whole fit: split off held-out good images, train the transformers, fit the heads.

With the paper's head every good image is trained on (spec section 5) and there is nothing
more to fit. The calibrated head needs scores of good images its statistics have not seen,
for each part's centre and scale and the decision threshold, as test images will be. By
default the heads are cross-fitted (``config.calibration``, :mod:`fod.training.crossfit`):
every image is held out once, by the heads of one fold, and the transformers and the heads
for new images see every image. ``holdout`` holds out a seeded slice (``config.holdout``)
instead, which neither the transformers nor the heads see: one head fit, a shorter run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fod.config import FODConfig
from fod.errors import DataError
from fod.model import FODTransformer
from fod.scoring.head import CalibratedHead, fit_head
from fod.training.crossfit import (
    CrossFit,
    crossfit_heads,
    holdout_count,
    image_order,
    resolve_calibration,
)
from fod.training.trainer import train

#: Fewest good images the calibrated head can work with (2 to fit, 1 to hold out).
MIN_CALIBRATED_IMAGES = 3


def check_calibrated_images(n: int) -> None:
    """Refuse fewer good images than the calibrated head needs, held out or cross-fitted."""
    if n < MIN_CALIBRATED_IMAGES:
        raise DataError(
            f"only {n} good training image(s): the calibrated head needs at least "
            f"{MIN_CALIBRATED_IMAGES} (some are held out to calibrate it). Add good images, or "
            "use the paper's head (--preset paper, or --head paper)."
        )


def holdout_split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded (fit, held-out) indices of n images; held out: round(fraction n), at least 1."""
    if fraction <= 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    check_calibrated_images(n)
    held = holdout_count(n, fraction)
    order = image_order(n, seed)
    return order[held:].sort().values, order[:held].sort().values


@dataclass
class FitResult:
    """Trained transformers, their heads (None for the paper's head), the training history,
    the features of the images that calibrate the heads (empty levels for the paper's head),
    the indices of the images the transformers trained on and of those that calibrate, and,
    cross-fitted, the :class:`~fod.training.crossfit.CrossFit` (then every image is in both
    sets, and ``holdout_scores`` are the out-of-fold token scores)."""

    models: list[FODTransformer]
    heads: list[CalibratedHead] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    holdout: list[Tensor] = field(default_factory=list)
    fit_indices: Tensor | None = None
    holdout_indices: Tensor | None = None
    crossfit: CrossFit | None = None

    @property
    def holdout_scores(self) -> list[Tensor] | None:
        """Out-of-fold token scores of the calibrating images when cross-fitted, else None."""
        return self.crossfit.scores if self.crossfit is not None else None

    def split(self) -> tuple[Tensor, Tensor]:
        """(fit, held-out) indices of a plain hold-out, for what is trained on good images
        apart from the heads (the segmenter): the fit's own split, or, cross-fitted, every
        fold but the first against the first."""
        if self.crossfit is not None:
            folds = self.crossfit.folds
            return torch.cat(folds[1:]).sort().values, folds[0]
        if self.fit_indices is None or self.holdout_indices is None:
            raise ValueError("the fit held no images out (the paper's head)")
        return self.fit_indices, self.holdout_indices


def fit(
    config: FODConfig,
    features: Sequence[Tensor],
    state_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> FitResult:
    """Train on ``features`` (one (N, C, H, W) tensor per level) as ``config`` says."""
    if not features:
        raise DataError("no feature levels given to train on")
    n = int(features[0].shape[0])
    calibrated = config.head == "calibrated"
    if calibrated and resolve_calibration(config.calibration, n, config.holdout) == "crossfit":
        check_calibrated_images(n)
        result = train(config, list(features), state_path, resume, progress, device, precision)
        crossfit = crossfit_heads(config, result.models, features, device)
        every = torch.arange(n)
        return FitResult(
            result.models, crossfit.heads, result.history, list(features), every, every, crossfit
        )
    fit_idx, held_idx = holdout_split(n, config.holdout if calibrated else 0.0, config.seed)
    train_features = [f[fit_idx] for f in features] if calibrated else list(features)
    held = [f[held_idx] for f in features] if calibrated else []
    result = train(config, train_features, state_path, resume, progress, device, precision)
    heads = None
    if calibrated:
        heads = fit_heads(config, result.models, train_features, held, device)
    return FitResult(result.models, heads, result.history, held, fit_idx, held_idx)


def fit_heads(
    config: FODConfig,
    models: Sequence[FODTransformer],
    fit_features: Sequence[Tensor],
    holdout_features: Sequence[Tensor],
    device: str | torch.device = "cpu",
) -> list[CalibratedHead]:
    """One calibrated head per level, with ``config.head_parts``, for trained ``models``."""
    return [
        fit_head(
            config.head_parts,
            model,
            tf,
            hf,
            config.bank_size,
            config.seed,
            device=device,
            bank_selection=config.bank_selection,
            pool=config.nearest_pool,
            pooled_bank_size=config.pooled_bank_size,
        )
        for model, tf, hf in zip(models, fit_features, holdout_features, strict=True)
    ]


__all__ = [
    "MIN_CALIBRATED_IMAGES",
    "FitResult",
    "check_calibrated_images",
    "fit",
    "fit_heads",
    "holdout_split",
]
