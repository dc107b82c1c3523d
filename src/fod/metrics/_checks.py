"""Input checks shared by the metrics.

Every metric turns bad input into a :class:`~fod.errors.MetricError` whose message names the
problem (shapes, NaN count, missing class) instead of returning NaN or a silently wrong number.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fod.errors import MetricError


def as_binary(values: Any, name: str) -> np.ndarray:
    """Labels or masks as a bool array; accepts bool, or numbers that are all 0 or 1 (or 255)."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "biuf":
        raise MetricError(f"{name} must be boolean or 0/1 numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise MetricError(f"{name} contain NaN; expected 0/1 values")
    if arr.size and not np.isin(arr, (0, 1, 255)).all():
        bad = np.unique(arr[~np.isin(arr, (0, 1, 255))])[:5].tolist()
        raise MetricError(f"{name} must contain only 0 and 1 (or 0 and 255), found {bad}")
    return arr != 0


def as_scores(values: Any, name: str) -> np.ndarray:
    """Scores as a float array without NaN (infinities are allowed: they still sort)."""
    arr = np.asarray(values)
    if arr.dtype == bool or arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    if arr.dtype.kind != "f":
        raise MetricError(f"{name} must be numbers, got dtype {arr.dtype}")
    n_nan = int(np.count_nonzero(np.isnan(arr)))
    if n_nan:
        raise MetricError(
            f"{name} contain {n_nan} NaN value(s) out of {arr.size}; "
            "a NaN score has no rank, fix the model output (e.g. diverged training) first"
        )
    return arr


def same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise MetricError(
            f"shape mismatch: {name_a} has shape {tuple(a.shape)} but {name_b} has shape "
            f"{tuple(b.shape)}; they must match element for element"
        )


def pixel_inputs(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Masks and maps as (N, H, W) arrays (a single (H, W) image is promoted to N = 1)."""
    m = as_binary(masks, "masks")
    s = as_scores(maps, "maps")
    same_shape(m, s, "masks", "maps")
    if m.ndim == 2:
        m, s = m[None], s[None]
    if m.ndim != 3:
        raise MetricError(f"masks and maps must have shape (N, H, W) or (H, W), got {m.shape}")
    return m, s


def need_both_classes(
    positive: int, negative: int, metric: str, pos_name: str, neg_name: str
) -> None:
    """Raise when one class is empty, e.g. ``pos_name="anomalous images"``."""
    if positive == 0:
        raise MetricError(
            f"{metric} is undefined: there are no {pos_name} (all {negative} are {neg_name})"
        )
    if negative == 0:
        raise MetricError(
            f"{metric} is undefined: there are no {neg_name} (all {positive} are {pos_name})"
        )
