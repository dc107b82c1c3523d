"""User-facing errors. The CLI prints their message (which names the file or value and the
fix) instead of a traceback; anything else is a bug and keeps its traceback."""


class FODError(Exception):
    """Base of every error caused by the user's input or environment."""


class DataError(FODError, ValueError):
    """An image, mask or data folder that cannot be used as it is."""


class BackboneError(FODError, RuntimeError):
    """A backbone that is unknown or whose weights are missing or do not fit."""


class CheckpointError(FODError, ValueError):
    """A model file that is unreadable or was made for another configuration."""


class MetricError(FODError, ValueError):
    """A metric that is undefined for the given labels (e.g. AUROC without anomalies)."""
