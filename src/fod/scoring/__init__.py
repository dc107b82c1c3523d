"""Scoring: per-level token scores -> S x S heat maps and image scores; the Detector module."""

from fod.scoring.anomaly_map import (
    DEFAULT_SIGMA,
    anomaly_map,
    gaussian_blur,
    gaussian_kernel,
    image_scores,
)
from fod.scoring.detector import Detector, ScoredSet, level_scores, score_features, score_samples

__all__ = [
    "DEFAULT_SIGMA",
    "Detector",
    "ScoredSet",
    "anomaly_map",
    "gaussian_blur",
    "gaussian_kernel",
    "image_scores",
    "level_scores",
    "score_features",
    "score_samples",
]
