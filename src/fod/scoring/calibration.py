"""Calibration on good images: the decision threshold and the heat-map colour range.

After training, good images are scored: the held-out ones with the calibrated head (the model
never trained on them), the training images with the paper's. The largest of their image
scores (the smallest value no known-good image exceeded) is the threshold unless synthetic
validation sets one (:mod:`fod.training.validation`); either way no test label is used.
The 1st and 99th percentiles of their pixel scores fix the colour scale of every heat map.
Under torchrun each rank scores its share of the images and the shares are gathered.

>>> stats = calibrate(levels, train_features, image_size=256)
>>> threshold = stats["train_score_max"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fod import distributed
from fod.errors import TrainingError
from fod.model import FODTransformer
from fod.scoring.detector import score_features
from fod.scoring.head import CalibratedHead
from fod.scoring.segmenter import AnomalySegmenter

#: Percentiles of the training pixel scores that fix the heat-map colour range.
PIXEL_PERCENTILES = (1.0, 99.0)
#: At most this many training pixels enter the percentiles (a regular subsample beyond).
MAX_PIXELS = 1 << 24
#: How the threshold is chosen, stored with the statistics: with the paper's head, and with
#: the calibrated head.
THRESHOLD_RULE = "max of the training images' scores"
HELD_OUT_THRESHOLD_RULE = "max of the held-out good images' scores"


def calibrate(
    levels: Sequence[FODTransformer],
    features: Sequence[Tensor],
    image_size: int,
    device: str | torch.device = "cpu",
    heads: Sequence[CalibratedHead] | None = None,
    segmenter: AnomalySegmenter | None = None,
    token_scores: Sequence[Tensor] | None = None,
) -> dict[str, Any]:
    """Statistics of the training images' scores: counts, image-score summary (its maximum,
    ``train_score_max``, is the threshold) and the pixel percentiles ``pixel_p1`` /
    ``pixel_p99``. ``token_scores``: the images' level scores where the validation has
    computed them already. Non-finite scores raise :class:`~fod.errors.TrainingError`."""
    ctx = distributed.context()
    share = distributed.shard_range(int(features[0].shape[0]), ctx.rank, ctx.world_size)

    def mine(tensors: Sequence[Tensor]) -> list[Tensor]:
        return [t[share.start : share.stop] for t in tensors]

    maps, scores = score_features(
        levels,
        mine(features),
        image_size,
        device=device,
        heads=heads,
        segmenter=segmenter,
        token_scores=None if token_scores is None else mine(token_scores),
    )
    maps, scores = distributed.all_gather_rows(maps), distributed.all_gather_rows(scores)
    s = scores.double().numpy()
    m = maps.numpy()
    if not (np.isfinite(s).all() and np.isfinite(m).all()):
        raise TrainingError(
            "the trained model scores the training images NaN or infinite, so no threshold "
            "can be set. Train again with a lower learning rate."
        )
    step = 1
    while m[:, ::step, ::step].size > MAX_PIXELS:
        step += 1
    pixels = m[:, ::step, ::step].ravel()
    p_lo, p_hi = np.percentile(pixels, PIXEL_PERCENTILES)
    return {
        "num_train": len(s),
        "train_score_min": float(s.min()),
        "train_score_mean": float(s.mean()),
        "train_score_std": float(s.std()),
        "train_score_p50": float(np.percentile(s, 50)),
        "train_score_p95": float(np.percentile(s, 95)),
        "train_score_max": float(s.max()),
        "pixel_p1": float(p_lo),
        "pixel_p99": float(p_hi),
        "threshold_rule": THRESHOLD_RULE if heads is None else HELD_OUT_THRESHOLD_RULE,
    }


__all__ = [
    "HELD_OUT_THRESHOLD_RULE",
    "MAX_PIXELS",
    "PIXEL_PERCENTILES",
    "THRESHOLD_RULE",
    "calibrate",
]
