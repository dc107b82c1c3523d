"""Training-loss plots as PNG files.

Uses ``matplotlib.figure.Figure`` with an Agg canvas directly instead of pyplot: no global
figure registry, no backend switch, so plotting from the library (or a worker thread) never
changes what a user's notebook or pyplot session does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fod.io import atomic_write

X_KEYS = ("epoch", "step")

History = Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]


def _number(value: Any) -> float | None:
    """A finite-or-NaN float for plotting (inf -> NaN gap), or None for non-numbers."""
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else math.nan


def loss_series(history: History) -> tuple[str, dict[str, tuple[list[float], list[float]]]]:
    """``(x label, {name: (xs, ys)})`` from records ``[{"epoch": 1, "loss": ...}, ...]`` or
    columns ``{"loss": [...], ...}``; x is the ``epoch`` or ``step`` entry when there is one,
    else the 1-based position. Non-numeric entries are skipped, infinities become gaps."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    if isinstance(history, Mapping):
        columns = {str(k): list(v) for k, v in history.items()}
        x_key = next((k for k in X_KEYS if k in columns), None)
        for name, values in columns.items():
            if name == x_key:
                continue
            xs: list[float] = []
            ys: list[float] = []
            for i, value in enumerate(values):
                y = _number(value)
                x = _number(columns[x_key][i]) if x_key and i < len(columns[x_key]) else i + 1
                if y is not None and x is not None:
                    xs.append(x)
                    ys.append(y)
            if xs:
                series[name] = (xs, ys)
        return x_key or "epoch", series
    records = [dict(r) for r in history]
    x_key = next((k for k in X_KEYS if records and all(k in r for r in records)), None)
    for i, record in enumerate(records):
        x = _number(record[x_key]) if x_key else float(i + 1)
        if x is None:
            continue
        for name, value in record.items():
            y = _number(value)
            if name in X_KEYS or y is None:
                continue
            xs_ys = series.setdefault(str(name), ([], []))
            xs_ys[0].append(x)
            xs_ys[1].append(y)
    return x_key or "epoch", series


def plot_losses(
    history: History,
    path: str | Path,
    title: str | None = None,
    *,
    xlabel: str | None = None,
    log_y: bool = False,
    size: tuple[float, float] = (7.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Write one line per loss term against epoch/step as a PNG (``size * dpi`` pixels).

    ``log_y`` uses a log axis, or a symmetric-log one when some values are <= 0 (the FOD
    objective has terms that go negative). An empty history gives a plot saying so rather
    than an error, so a report never fails for want of a curve.
    """
    x_key, series = loss_series(history)
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if series:
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, label=name, marker="." if len(xs) < 30 else None, linewidth=1.2)
        if log_y:
            values = [y for _, ys in series.values() for y in ys if not math.isnan(y)]
            ax.set_yscale("log" if values and min(values) > 0 else "symlog")
        if len(series) > 1:
            ax.legend(loc="best", fontsize="small")
        ax.grid(True, alpha=0.3)
    else:
        ax.text(
            0.5, 0.5, "no loss values recorded", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_xlabel(xlabel or x_key)
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi))
