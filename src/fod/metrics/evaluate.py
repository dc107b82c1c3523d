"""All metrics of one category in one call, overall and per defect type.

A metric that is undefined for the given data (no anomalies of a kind, no masks, NaN scores)
becomes ``None`` with its reason in ``"reasons"``, so one bad subset never loses the rest of
an evaluation that may have taken an hour of scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fod.errors import MetricError
from fod.metrics._checks import as_binary
from fod.metrics.classification import f1_max, image_auroc, pixel_auroc
from fod.metrics.pro import aupro


def _attempt(
    out: dict[str, Any], reasons: dict[str, str], key: str, fn: Callable[[], float]
) -> None:
    try:
        out[key] = float(fn())
    except MetricError as err:
        out[key] = None
        reasons[key] = str(err)


def _length(name: str, value: Any) -> int:
    shape = np.shape(value)
    if len(shape) == 0:
        raise MetricError(f"{name} must have one entry per image, got a scalar")
    return int(shape[0])


def _pixel_metrics(
    out: dict[str, Any],
    reasons: dict[str, str],
    masks: np.ndarray | None,
    maps: np.ndarray | None,
    mask_reason: str | None,
    max_fpr: float,
    num_thresholds: int | None,
) -> None:
    if masks is None or maps is None:
        for key in ("pixel_auroc", "aupro"):
            out[key] = None
            reasons[key] = mask_reason or "no ground-truth masks or no anomaly maps given"
        return
    _attempt(out, reasons, "pixel_auroc", lambda: pixel_auroc(masks, maps))
    _attempt(
        out,
        reasons,
        "aupro",
        lambda: aupro(masks, maps, max_fpr=max_fpr, num_thresholds=num_thresholds),
    )


def evaluate(
    labels: Any,
    image_scores: Any,
    masks: Any | None,
    maps: Any | None,
    defect_types: Sequence[str] | None = None,
    *,
    max_fpr: float = 0.3,
    num_thresholds: int | None = None,
) -> dict[str, Any]:
    """Image AUROC, pixel AUROC, AUPRO, F1-max (image level) overall and per defect type.

    ``labels`` (N,) are 1 for anomalous images; ``masks`` / ``maps`` are (N, H, W) or None when
    the data set has no pixel annotation. Each defect type is scored against all normal
    images. Returns plain Python numbers (JSON-able): ``image_auroc``, ``pixel_auroc``,
    ``aupro``, ``f1_max``, ``f1_threshold``, ``per_defect``, ``counts`` and ``reasons`` (why a
    value is None). Raises :class:`MetricError` only when the inputs disagree on the number of
    images.
    """
    n = _length("labels", labels)
    inputs = {"image_scores": image_scores, "masks": masks, "maps": maps}
    if defect_types is not None:
        inputs["defect_types"] = defect_types
    for name, value in inputs.items():
        if value is not None and _length(name, value) != n:
            raise MetricError(
                f"labels has {n} entries but {name} has shape {tuple(np.shape(value))}; "
                "every input needs one entry per test image"
            )

    out: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    counts: dict[str, int] = {"images": n}
    try:
        y = as_binary(labels, "labels").reshape(n)
    except (MetricError, ValueError) as err:
        raise MetricError(f"labels cannot be used: {err}") from err
    counts["anomalous"] = int(y.sum())
    counts["normal"] = n - counts["anomalous"]

    _attempt(out, reasons, "image_auroc", lambda: image_auroc(y, image_scores))
    try:
        f1, threshold = f1_max(y, image_scores)
        out["f1_max"], out["f1_threshold"] = f1, threshold
    except MetricError as err:
        out["f1_max"] = out["f1_threshold"] = None
        reasons["f1_max"] = reasons["f1_threshold"] = str(err)

    mask_arr: np.ndarray | None = None
    map_arr: np.ndarray | None = None
    mask_reason: str | None = None
    if masks is not None and maps is not None:
        try:
            mask_arr = as_binary(masks, "masks")
            map_arr = np.asarray(maps)
        except MetricError as err:
            mask_reason = str(err)
            mask_arr = map_arr = None
    if mask_arr is not None:
        defective = int(np.count_nonzero(mask_arr))
        counts["defective_pixels"] = defective
        counts["normal_pixels"] = int(mask_arr.size) - defective
        per_image = mask_arr.reshape(n, -1).any(axis=1)
        counts["anomalous_with_empty_mask"] = int(np.count_nonzero(y & ~per_image))
        counts["normal_with_defect_pixels"] = int(np.count_nonzero(~y & per_image))
    _pixel_metrics(out, reasons, mask_arr, map_arr, mask_reason, max_fpr, num_thresholds)

    per_defect: dict[str, dict[str, Any]] = {}
    if defect_types is not None:
        types = np.asarray([str(t) for t in defect_types])
        scores = np.asarray(image_scores)
        for name in sorted(set(types[y].tolist())):
            chosen = ~y | (types == name)
            entry: dict[str, Any] = {}
            why: dict[str, str] = {}
            _attempt(entry, why, "image_auroc", lambda c=chosen: image_auroc(y[c], scores[c]))
            sub_masks = None if mask_arr is None else mask_arr[chosen]
            sub_maps = None if map_arr is None else map_arr[chosen]
            _pixel_metrics(entry, why, sub_masks, sub_maps, mask_reason, max_fpr, num_thresholds)
            entry["count"] = int(np.count_nonzero(y & (types == name)))
            entry["normal_count"] = counts["normal"]
            entry["reasons"] = why
            per_defect[name] = entry

    return {
        "image_auroc": out["image_auroc"],
        "pixel_auroc": out["pixel_auroc"],
        "aupro": out["aupro"],
        "f1_max": out["f1_max"],
        "f1_threshold": out["f1_threshold"],
        "per_defect": per_defect,
        "counts": counts,
        "reasons": reasons,
    }
