"""Frozen feature extractors with offline weights only."""

from fod.backbone.efficientnet_lite import create_efficientnet_lite
from fod.backbone.extractor import DEFAULT_BACKBONE, FeatureExtractor, create_backbone

__all__ = ["DEFAULT_BACKBONE", "FeatureExtractor", "create_backbone", "create_efficientnet_lite"]
