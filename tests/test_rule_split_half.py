"""benchmarks/rule_split_half.py: the label-free comparison of the image-score rules."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import benchmark_script

from fod.metrics.classification import auroc_from_groups
from fod.training.validation import auroc_standard_error


def _module():
    return benchmark_script("rule_split_half")


ROWS = [
    {"levels": [0.5, 0.5], "parts": ["a"]},
    {"levels": [1.0, 0.0], "parts": ["a"]},
    {"levels": [0.0, 1.0], "parts": ["a"]},
]


def test_a_lone_separating_weighting_is_every_rule_on_the_other_half() -> None:
    rng = np.random.default_rng(0)
    n, per = 40, 2
    owner = np.arange(n * per) % n
    g, a = rng.normal(size=(3, n)), rng.normal(size=(3, n * per))
    g[1], a[1] = rng.uniform(0, 1, n), rng.uniform(2, 3, n * per)  # only row 1 separates
    results = _module().split_half(ROWS, g, a, owner, splits=5)
    for name in ("single", "best", "band", "simplest"):
        assert results[name] == [1.0] * 5, name


def test_the_band_averages_the_rows_over_their_spread_on_the_first_half() -> None:
    rng = np.random.default_rng(1)
    n = 30
    owner = np.arange(2 * n) % n
    shift = rng.normal(size=(1, n))  # a good image's rows move together
    g = shift + 0.3 * rng.normal(size=(3, n)) * np.array([[1.0], [3.0], [10.0]])
    a = shift[:, owner] + 1.5 + 0.3 * rng.normal(size=(3, 2 * n)) * np.array([[1.0], [3.0], [10.0]])
    module = _module()
    got = module.split_half(ROWS, g, a, owner, splits=1, seed=7)
    # the same split by hand
    first = np.zeros(n, dtype=bool)
    first[np.random.default_rng(7).permutation(n)[: n // 2]] = True
    a_first = first[owner]
    aurocs = [auroc_from_groups(a[k][a_first], g[k][first]) for k in range(3)]
    top = int(np.argmax(aurocs))
    se = auroc_standard_error(aurocs[top], int(a_first.sum()), int(first.sum()))
    near = [k for k in range(3) if aurocs[k] >= aurocs[top] - se - 1e-12]
    assert len(near) > 1  # a real average
    spread = np.array([np.std(g[k][first], ddof=1) for k in near])
    band_a = sum(a[k] / s for k, s in zip(near, spread, strict=True)) / len(near)
    band_g = sum(g[k] / s for k, s in zip(near, spread, strict=True)) / len(near)
    want = auroc_from_groups(band_a[~a_first], band_g[~first])
    assert got["band"] == [pytest.approx(want)]
    assert got["best"] == [pytest.approx(auroc_from_groups(a[top][~a_first], g[top][~first]))]
    # every row has one part: the band's simplest rows are the whole band
    assert got["simplest"] == got["band"]
    # with a second part in rows 1 and 2, the simplest are the band's one-part rows
    rows = [ROWS[0], *({**r, "parts": ["a", "b"]} for r in ROWS[1:])]
    got = module.split_half(rows, g, a, owner, splits=1, seed=7)
    fewest = min(len(rows[k]["parts"]) for k in near)
    simple = [k for k in near if len(rows[k]["parts"]) == fewest]
    assert simple == [0] and got["band"] == [pytest.approx(want)]
    assert got["simplest"] == [pytest.approx(auroc_from_groups(a[0][~a_first], g[0][~first]))]
