"""Evaluation on precomputed features: one category's test split, judged against heat maps.

``fod ablate``, ``fod bench baselines`` and ``benchmarks/learning_curve.py`` compute the
backbone features of a category once and score them many ways (eight model variants, three
training-free scorers, one run at several epochs). This module is their one path from a
category to features and ground truth, and from heat maps to metrics; it also reads the
finished run results that resumable commands (``fod benchmark``, ``fod ablate``) skip.

>>> features = category_features(category, backbone, image_size=256, cache_dir="runs/cache")
>>> maps, scores = score_features(models, features.test, 256)
>>> metrics = features.evaluate(maps, scores)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fod.backbone import FeatureExtractor
from fod.config import FODConfig, legacy_config
from fod.data import Category, load_masks
from fod.errors import CheckpointError
from fod.metrics import evaluate
from fod.scoring.anomaly_map import image_scores
from fod.training.features import FeatureCache, gathered_features


@dataclass
class CategoryFeatures:
    """Backbone features of a category's training and test images (one tensor per level)
    and the test split's ground truth at the model's image size."""

    category: Category
    train: list[Tensor]
    test: list[Tensor]
    labels: list[int]
    masks: np.ndarray
    defect_types: list[str]

    def evaluate(self, maps: Tensor, scores: Tensor | None = None) -> dict[str, Any]:
        """Metrics of :func:`fod.metrics.evaluate` for test heat maps ``maps`` (N, S, S) and
        image scores ``scores`` (N,); without scores, the blurred maximum of each map."""
        if scores is None:
            scores = image_scores(maps)
        return evaluate(self.labels, scores.numpy(), self.masks, maps.numpy(), self.defect_types)


def category_features(
    category: Category,
    backbone: FeatureExtractor,
    image_size: int,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> CategoryFeatures:
    """Features of both splits (read from and written to ``cache_dir`` when given) and the
    test labels, masks and defect types."""
    cache = FeatureCache(cache_dir) if cache_dir is not None else None
    options = {"device": device, "progress": progress, "cache": cache}
    return CategoryFeatures(
        category=category,
        train=gathered_features(backbone, category.train, image_size, **options),
        test=gathered_features(backbone, category.test, image_size, **options),
        labels=[s.label for s in category.test],
        masks=load_masks(category.test, image_size),
        defect_types=[s.defect_type for s in category.test],
    )


def load_run_result(path: str | Path, config: FODConfig, key: str, what: str) -> Any:
    """The ``key`` entry of a finished run's JSON file (``{"config": ..., key: ...}``).

    Resumable commands (``fod benchmark``, ``fod ablate``) skip work whose result exists;
    a result made with other settings is refused rather than mixed into one table.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        stored = FODConfig.from_dict(legacy_config(data["config"]))
        value = data[key]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: unreadable {what} ({exc}); delete it to run it again"
        ) from exc
    diff = stored.differences(config)
    if diff:
        detail = "; ".join(f"{k}: there {v[0]!r}, now {v[1]!r}" for k, v in diff.items())
        raise CheckpointError(
            f"{path}: this {what} was made with other settings ({detail}). Use another output "
            "folder, or the same settings."
        )
    return value


__all__ = ["CategoryFeatures", "category_features", "load_run_result"]
