"""Threshold-free classification metrics: AUROC (image and pixel level) and F1-max.

AUROC is computed exactly from ranks (the Mann-Whitney statistic, ties counted as one half),
without building the ROC curve: both classes are sorted and the smaller one is located in the
larger one chunk by chunk. For 600 x 256 x 256 float32 pixels this needs ~200 MB on top of the
inputs (one copy of the scores and the inverted mask) and ~1 s, where sklearn's
``roc_auc_score`` on the flattened arrays took ~28 s and ~1.9 GB on the same machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fod.errors import MetricError
from fod.metrics._checks import as_binary, as_scores, need_both_classes, pixel_inputs, same_shape

# Keys located per step: bounds the two int64 index arrays to ~64 MB.
_CHUNK = 1 << 22


def auroc_from_groups(
    positive: np.ndarray, negative: np.ndarray, *, overwrite: bool = False
) -> float:
    """AUROC of two score samples: P(pos > neg) + P(pos == neg) / 2, exact.

    Both arrays must be 1-D, non-empty and free of NaN. Both are sorted (in place when
    ``overwrite``, which saves a copy of the inputs) and the smaller sample is located in the
    larger one: with sorted keys ``searchsorted`` walks memory in order, which is ~50x faster
    than probing a big array at random.
    """
    n_pos, n_neg = positive.size, negative.size
    if n_pos == 0 or n_neg == 0:
        raise MetricError("AUROC needs at least one positive and one negative score")
    common = np.result_type(positive.dtype, negative.dtype)
    pos = positive.astype(common, copy=not overwrite)
    neg = negative.astype(common, copy=not overwrite)
    pos.sort()
    neg.sort()
    keys_are_pos = n_pos <= n_neg
    keys, table = (pos, neg) if keys_are_pos else (neg, pos)
    greater = 0  # number of (pos, neg) pairs with pos > neg
    equal = 0  # number of tied pairs
    for start in range(0, keys.size, _CHUNK):
        part = keys[start : start + _CHUNK]
        left = np.searchsorted(table, part, side="left")
        right = np.searchsorted(table, part, side="right")
        equal += int((right - left).sum())
        if keys_are_pos:  # negatives strictly below each positive
            greater += int(left.sum())
        else:  # positives strictly above each negative
            greater += int((table.size - right).sum())
    return (2 * greater + equal) / (2 * n_pos * n_neg)


def image_auroc(labels: Any, scores: Any) -> float:
    """Image-level AUROC; ``labels`` are 1 (or True) for anomalous images."""
    y = as_binary(labels, "labels")
    s = as_scores(scores, "scores")
    same_shape(y, s, "labels", "scores")
    y, s = y.ravel(), s.ravel()
    n_pos = int(y.sum())
    need_both_classes(n_pos, y.size - n_pos, "image AUROC", "anomalous images", "normal images")
    return auroc_from_groups(s[y], s[~y], overwrite=True)


def pixel_auroc(masks: Any, maps: Any) -> float:
    """Pixel-level AUROC over all pixels of all images; masks (N, H, W) bool, maps (N, H, W)."""
    m, s = pixel_inputs(masks, maps)
    n_pos = int(np.count_nonzero(m))
    need_both_classes(
        n_pos, m.size - n_pos, "pixel AUROC", "defective pixels", "normal (non-defective) pixels"
    )
    return auroc_from_groups(s[m], s[~m], overwrite=True)


def f1_max(labels: Any, scores: Any) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold reaching it (anomalous if score >= it).

    Every distinct score is tried as a threshold, i.e. every point of the precision-recall
    curve; among equally good thresholds the highest is returned.
    """
    y = as_binary(labels, "labels")
    s = as_scores(scores, "scores")
    same_shape(y, s, "labels", "scores")
    y, s = y.ravel(), s.ravel()
    n_pos = int(y.sum())
    if n_pos == 0:
        raise MetricError(f"F1-max is undefined: there are no anomalous samples (all {y.size})")
    order = np.argsort(-s, kind="stable")
    s_desc = s[order]
    tp = np.cumsum(y[order], dtype=np.int64)
    # Last index of each group of tied scores: predicting ">= that score" takes the whole group.
    ends = np.append(np.flatnonzero(s_desc[1:] != s_desc[:-1]), s_desc.size - 1)
    tp_at = tp[ends]
    predicted = ends + 1
    f1 = 2.0 * tp_at / (predicted + n_pos)  # 2 TP / (2 TP + FP + FN)
    best = int(np.argmax(f1))
    return float(f1[best]), float(s_desc[ends[best]])
