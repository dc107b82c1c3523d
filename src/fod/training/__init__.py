"""Training: backbone features computed once (and cached), the training loop with resume, and
model files."""

from fod.training.checkpoint import (
    MODEL_FORMAT,
    MODEL_VERSION,
    check_model_target,
    load_model_file,
    read_model_file,
    save_model_file,
)
from fod.training.features import FeatureCache, extract_features, feature_key
from fod.training.fit import FitResult, fit, holdout_split
from fod.training.trainer import TrainResult, build_models, read_state, train

__all__ = [
    "MODEL_FORMAT",
    "MODEL_VERSION",
    "FeatureCache",
    "FitResult",
    "TrainResult",
    "build_models",
    "check_model_target",
    "extract_features",
    "feature_key",
    "fit",
    "holdout_split",
    "load_model_file",
    "read_model_file",
    "read_state",
    "save_model_file",
    "train",
]
