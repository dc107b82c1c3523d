"""AUPRO: area under the per-region-overlap curve up to a false-positive rate of 30 %.

Definition (Bergmann et al., MVTec AD): every connected component (8-connectivity) of every
ground-truth mask is one region. At threshold ``t`` the PRO is the mean over all regions of
``|region & (map >= t)| / |region|`` (every region counts the same, whatever its size), and the
FPR is the fraction of all normal pixels (outside every mask, over all images) with
``map >= t``. The curve is integrated over FPR from 0 to ``max_fpr`` with the trapezoidal rule,
interpolating linearly at exactly ``max_fpr``, and divided by ``max_fpr`` so that a perfect map
scores 1.

The exact computation visits every distinct score. Along the FPR axis the curve only moves at
scores of normal pixels, so it is enough to sort the normal scores (and only the top
``max_fpr`` fraction is used) and to find, for each distinct normal score ``v``, the PRO of the
pixels ``> v`` and ``>= v`` from the sorted defect scores with cumulative region weights. Ties
between normal and defect pixels become a straight segment, as in an ROC curve with ties.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from fod.errors import MetricError
from fod.metrics._checks import need_both_classes, pixel_inputs

_EIGHT = np.ones((3, 3), dtype=bool)


def region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per defect pixel (in ``masks[masks]`` order) the weight ``1 / (R * |its region|)``.

    Summing the weights of the detected pixels gives the PRO directly. Returns the weights
    and the number of regions R.
    """
    ids: list[np.ndarray] = []
    offset = 0
    for mask in masks:
        if not mask.any():
            continue
        labelled, count = ndimage.label(mask, structure=_EIGHT)
        ids.append(labelled[mask].astype(np.int64) + (offset - 1))
        offset += count
    if offset == 0:
        return np.zeros(0, dtype=np.float64), 0
    region = np.concatenate(ids)
    area = np.bincount(region, minlength=offset)
    return 1.0 / (offset * area[region].astype(np.float64)), offset


def _defect_side(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Defect scores sorted ascending and ``above[i]`` = PRO of the pixels ``sorted[i:]``."""
    weights, _ = region_weights(masks)
    pos = maps[masks]
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    above = np.zeros(pos.size + 1, dtype=np.float64)
    above[:-1] = np.cumsum(weights[order][::-1])[::-1]
    return pos, above


def _check(masks: Any, maps: Any, max_fpr: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < float(max_fpr) <= 1.0:
        raise MetricError(f"max_fpr must be in (0, 1], got {max_fpr}")
    m, s = pixel_inputs(masks, maps)
    n_pos = int(np.count_nonzero(m))
    need_both_classes(
        n_pos, m.size - n_pos, "AUPRO", "defective pixels", "normal (non-defective) pixels"
    )
    return m, s


def _exact_vertices(
    m: np.ndarray, s: np.ndarray, max_fpr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices (fpr, pro, threshold) of the exact curve, from (0, 0) to just past max_fpr."""
    neg = s[~m]  # a copy: sorted in place below
    neg.sort()
    n_neg = neg.size
    # Only the highest normal scores matter: those up to an FPR of max_fpr, and their ties.
    need = min(n_neg, max(1, int(np.ceil(max_fpr * n_neg))))
    last = neg[n_neg - need]
    top = neg[np.searchsorted(neg, last, side="left") :][::-1]  # descending
    starts = np.concatenate(([0], np.flatnonzero(top[1:] != top[:-1]) + 1))
    ends = np.append(starts[1:], top.size)
    values = top[starts]  # distinct normal scores, descending
    pos, above = _defect_side(m, s)
    right = np.searchsorted(pos, values, side="right")
    left = np.searchsorted(pos, values, side="left")
    # Just above v the map predicts exactly the pixels > v: smallest such score is the threshold.
    prev_neg = np.concatenate(([np.inf], values[:-1]))
    next_pos = np.where(right < pos.size, pos[np.minimum(right, pos.size - 1)], np.inf)
    thr_gt = np.minimum(prev_neg, next_pos).astype(np.float64)
    k = values.size
    fpr = np.empty(2 * k + 1)
    pro = np.empty(2 * k + 1)
    thr = np.empty(2 * k + 1)
    fpr[0], pro[0], thr[0] = 0.0, 0.0, np.inf
    fpr[1::2], pro[1::2], thr[1::2] = starts / n_neg, above[right], thr_gt
    fpr[2::2], pro[2::2], thr[2::2] = ends / n_neg, above[left], values
    if top.size == n_neg and pos[0] < values[-1]:
        # Defect pixels below every normal one: the curve ends with a step up at FPR = 1.
        fpr, pro = np.append(fpr, 1.0), np.append(pro, above[0])
        thr = np.append(thr, float(pos[0]))
    # Drop repeated points (a threshold just above v that is the previous normal score).
    keep = np.concatenate(([True], (np.diff(fpr) != 0) | (np.diff(pro) != 0)))
    return fpr[keep], pro[keep], thr[keep]


def _binned_vertices(
    m: np.ndarray, s: np.ndarray, num_thresholds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curve at ``num_thresholds`` evenly spaced thresholds between the min and max score."""
    lo, hi = float(s.min()), float(s.max())
    thresholds = np.linspace(lo, hi, num_thresholds)
    bins, rng = num_thresholds - 1, (lo, hi)
    # Bin k is [t_k, t_k+1) (the last one closed): pixels >= t_k are the bins k and above.
    neg_hist, _ = np.histogram(s[~m], bins=bins, range=rng)
    weights, _ = region_weights(m)
    pos_hist, _ = np.histogram(s[m], bins=bins, range=rng, weights=weights)
    n_neg = int(neg_hist.sum())
    fpr = np.concatenate(([0.0], np.cumsum(neg_hist[::-1]) / n_neg))
    pro = np.concatenate(([0.0], np.cumsum(pos_hist[::-1])))
    thr = np.concatenate(([np.inf], thresholds[-2::-1]))
    return fpr, pro, thr


def _curve(
    masks: Any, maps: Any, max_fpr: float, num_thresholds: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m, s = _check(masks, maps, max_fpr)
    if num_thresholds is not None:
        if int(num_thresholds) < 2:
            raise MetricError(f"num_thresholds must be at least 2, got {num_thresholds}")
        finite = bool(np.isfinite(s).all())
        if finite and s.min() < s.max():
            return _binned_vertices(m, s, int(num_thresholds))
    return _exact_vertices(m, s, float(max_fpr))


def pro_curve(
    masks: Any, maps: Any, max_fpr: float = 1.0, num_thresholds: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The PRO curve as vertices ``(fpr, pro, thresholds)``, FPR ascending.

    Point i is the map thresholded at ``map >= thresholds[i]``; between vertices the curve is
    a straight line. The exact curve (``num_thresholds=None``) stops at the first vertex at or
    past ``max_fpr``.
    """
    return _curve(masks, maps, max_fpr, num_thresholds)


def area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under y(x) for x in [0, x_max], interpolating y at exactly x_max.

    ``x`` must be non-decreasing and start at 0; vertical steps add nothing.
    """
    k = int(np.searchsorted(x, x_max, side="right"))  # x[:k] <= x_max
    xs, ys = x[:k], y[:k]
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))
    if k < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += (x_max - x0) * (y0 + y_at) / 2.0
    return area


def aupro(masks: Any, maps: Any, max_fpr: float = 0.3, num_thresholds: int | None = None) -> float:
    """Normalised area under the PRO curve for FPR in [0, max_fpr]; 1 is perfect.

    ``num_thresholds=None`` (default) is exact. An integer uses that many evenly spaced
    thresholds (histograms, no sort): faster on huge inputs but an approximation whose error
    grows when the normal scores crowd into a few bins.
    """
    fpr, pro, _ = _curve(masks, maps, max_fpr, num_thresholds)
    return area_up_to(fpr, pro, float(max_fpr)) / float(max_fpr)
