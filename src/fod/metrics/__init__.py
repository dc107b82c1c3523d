"""Metrics: image AUROC, pixel AUROC, AUPRO (30 % FPR), F1-max, and ``evaluate`` for all."""

from fod.metrics.classification import auroc_from_groups, f1_max, image_auroc, pixel_auroc
from fod.metrics.evaluate import evaluate
from fod.metrics.pro import area_up_to, aupro, pro_curve, region_weights

__all__ = [
    "area_up_to",
    "aupro",
    "auroc_from_groups",
    "evaluate",
    "f1_max",
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
    "region_weights",
]
