"""fod: Focus the Discrepancy (Yao et al., ICCV 2023) for image anomaly detection.

``fod.FOD`` is the Python API and ``fod.FODConfig`` its configuration; both are imported on
first use, so ``import fod`` (and ``fod --help``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fod._version import __version__

_LAZY = {
    "FOD": "fod.api",
    "Prediction": "fod.api",
    "FODConfig": "fod.config",
}

if TYPE_CHECKING:
    from fod.api import FOD, Prediction
    from fod.config import FODConfig

__all__ = ["FOD", "FODConfig", "Prediction", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fod' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
