"""What many test files share: one tiny configuration, one generated data set, a hand-written
bilinear resize (the independent reference for every upsampling).

``TINY`` is the smallest configuration that still runs the whole method (EfficientNet-Lite0 at
64 px, two levels of d = 32, two heads, one layer), so a training run takes seconds on a CPU.
The ``generated`` fixture is a circuit-board category from :mod:`fod.data.synthetic` (local and
logical defects with exact masks), written once per session; tests that change files copy it.
The ``mtd`` fixture is the real MTD data set beside the checkout: a test that needs it is
skipped where it is missing, but fails in CI (``CI`` set), where it is always there.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from fod.config import FODConfig
from fod.data.synthetic import CATEGORIES, generate

TINY: dict[str, Any] = {
    "backbone": "efficientnet_lite0",
    "image_size": 64,
    "d_model": (32, 32),
    "heads": 2,
    "num_layers": 1,
    "epochs": 8,
    "batch_size": 4,
    "lr": 1e-3,
}

#: The real MTD data set: read-only shared data beside the checkout, never copied into it.
MTD = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mtd"

#: The generated category: its name and the image counts of each split.
GENERATED = {"category": "board", "n_train": 16, "n_test_good": 6, "n_test_per_defect": 3}
GENERATED_DEFECTS: tuple[str, ...] = CATEGORIES[GENERATED["category"]].defects


#: What TINY trained on the generated category achieves, with a margin: measured 0.689 image
#: AUROC, 0.695 pixel AUROC and a mean defect score 15% above the mean normal one (after one
#: epoch instead of eight: 0.378 and 0.606, so the bars test that training works).
GENERATED_BARS = {"image_auroc": 0.6, "pixel_auroc": 0.65, "score_ratio": 1.08}


def fold_routed_scores(levels, fold_heads, row_folds, features) -> list:
    """The slow reference of cross-fitted scoring: row r of ``features`` (one (N, C, H, W)
    per level) scored alone by the heads of fold ``row_folds[r]``, standardised."""
    import torch

    from fod.training.validation import token_scores

    rows = [
        token_scores(levels, fold_heads[int(j)], [f[r : r + 1] for f in features])
        for r, j in enumerate(row_folds.tolist())
    ]
    return [torch.cat([row[level] for row in rows]) for level in range(len(features))]


def assert_defects_outscore_normals(
    metrics: Mapping[str, Any], good: Sequence[float], defect: Sequence[float]
) -> None:
    """The bars of :data:`GENERATED_BARS` for ``metrics`` of the generated category's test
    split and the image scores of its normal (``good``) and defective images."""
    for key in ("image_auroc", "pixel_auroc"):
        assert metrics[key] >= GENERATED_BARS[key], (key, metrics[key])
    ratio = float(np.mean(defect) / np.mean(good))
    assert ratio >= GENERATED_BARS["score_ratio"], ratio


def bilinear_numpy(grid: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (align_corners=False), written out by hand."""
    in_h, in_w = grid.shape

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        src = np.clip(src, 0.0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, wy = axis(out_h, in_h)
    x0, x1, wx = axis(out_w, in_w)
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x1] * wx
    bottom = grid[y1][:, x0] * (1 - wx) + grid[y1][:, x1] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**changes: Any) -> FODConfig:
    """:data:`TINY` with ``changes``."""
    return FODConfig(**{**TINY, **changes})


def tiny_args(**changes: Any) -> list[str]:
    """:data:`TINY` with ``changes`` as ``fod train`` options (progress bars off)."""
    args: list[str] = []
    for key, value in {**TINY, **changes}.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        args += [f"--{key.replace('_', '-')}", *map(str, values)]
    return [*args, "--quiet"]


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated category folder (MVTec AD layout), shared by the session: read only."""
    sizes = {k: v for k, v in GENERATED.items() if k != "category"}
    root = generate(
        tmp_path_factory.mktemp("generated"),
        (GENERATED["category"],),
        image_size=TINY["image_size"],
        seed=1,
        **sizes,
    )
    return root / GENERATED["category"]


@pytest.fixture(scope="session")
def mtd() -> Path:
    """The MTD folder; skips the test where it is missing, fails it in CI."""
    if not MTD.is_dir():
        message = f"real MTD data set not found at {MTD} (read-only shared data, not in the repo)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{message}; CI runs beside it, so its absence is a setup error")
        pytest.skip(message)
    return MTD
