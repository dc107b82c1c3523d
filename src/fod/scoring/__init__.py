"""Scoring: per-level token scores -> S x S heat maps and image scores; the Detector module."""

from fod.scoring.anomaly_map import (
    DEFAULT_SIGMA,
    anomaly_map,
    blurred_upsample,
    gaussian_blur,
    gaussian_kernel,
    image_scores,
)
from fod.scoring.calibration import PIXEL_PERCENTILES, calibrate
from fod.scoring.detector import Detector, ScoredSet, level_scores, score_features, score_samples
from fod.scoring.segmenter import AnomalySegmenter

__all__ = [
    "DEFAULT_SIGMA",
    "PIXEL_PERCENTILES",
    "AnomalySegmenter",
    "Detector",
    "ScoredSet",
    "anomaly_map",
    "blurred_upsample",
    "calibrate",
    "gaussian_blur",
    "gaussian_kernel",
    "image_scores",
    "level_scores",
    "score_features",
    "score_samples",
]
