"""Result tables: one Markdown table for people, CSV and JSON for programs.

The same numbers go to all three files; Markdown rounds to 3 decimals, CSV and JSON keep full
precision. Undefined values (None or NaN) print as ``n/a`` rather than disappearing, so a
missing metric is visible next to the others. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fod.io import write_json, write_text

NA = "n/a"

METRIC_COLUMNS: list[tuple[str, str]] = [
    ("image_auroc", "Image AUROC"),
    ("pixel_auroc", "Pixel AUROC"),
    ("aupro", "AUPRO"),
    ("f1_max", "F1-max"),
]
METRIC_KEYS: list[str] = [key for key, _ in METRIC_COLUMNS]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _defined(value: Any) -> bool:
    return _is_number(value) and math.isfinite(float(value))


def format_value(value: Any, digits: int = 3) -> str:
    """Table cell text: floats with ``digits`` decimals, None/NaN as ``n/a``."""
    if value is None or (_is_number(value) and math.isnan(float(value))):
        return NA
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value)


def metrics_line(metrics: Mapping[str, Any]) -> str:
    """``image AUROC 0.812, pixel AUROC 0.904, AUPRO n/a``: a progress line that survives the
    metrics :func:`fod.metrics.evaluate` leaves undefined (None)."""
    return (
        f"image AUROC {format_value(metrics.get('image_auroc'))}, "
        f"pixel AUROC {format_value(metrics.get('pixel_auroc'))}, "
        f"AUPRO {format_value(metrics.get('aupro'))}"
    )


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, NaN/inf to None, paths to strings."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], digits: int = 3
) -> str:
    """A GitHub-flavoured Markdown table; ``columns`` are ``(key, header)`` pairs."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(header) for _, header in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        cells = (cell(format_value(row.get(key), digits)) for key, _ in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> str:
    if value is None or (_is_number(value) and not math.isfinite(float(value))):
        return NA
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # shortest text that reads back to the same float
    return str(value)


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str] | str]) -> str:
    """CSV with the column keys as header and full-precision numbers; None as ``n/a``."""
    keys = [c if isinstance(c, str) else c[0] for c in columns]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for row in rows:
        writer.writerow([_csv_value(row.get(k)) if k in row else "" for k in keys])
    return buf.getvalue()


def write_csv(
    path: str | Path,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[tuple[str, str] | str],
) -> Path:
    """Write :func:`csv_text` atomically (a key missing from a row is an empty cell)."""
    return write_text(path, csv_text(rows, columns))


def summarize(
    per_category: Mapping[str, Mapping[str, Any]], keys: Sequence[str] | None = None
) -> dict[str, Any]:
    """``{"categories": ..., "mean": ...}`` with the mean over categories of each metric.

    None and NaN are left out of a mean (a metric undefined for one category should not sink
    the average); ``mean["count"]`` says how many categories each mean is over, and a mean
    over no category is None.
    """
    keys = list(METRIC_KEYS if keys is None else keys)
    categories = {str(name): dict(values) for name, values in per_category.items()}
    mean: dict[str, Any] = {}
    count: dict[str, int] = {}
    for key in keys:
        values = [float(v[key]) for v in categories.values() if _defined(v.get(key))]
        mean[key] = float(np.mean(values)) if values else None
        count[key] = len(values)
    mean["count"] = count
    mean["categories"] = len(categories)
    return {"categories": categories, "mean": mean}


def _extra_scalar_keys(categories: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per-category keys beyond the metrics whose values are scalars in every category."""
    scalar = (str, int, float, np.integer, np.floating)
    seen: dict[str, None] = {}  # insertion-ordered set
    nested: set[str] = set()
    for values in categories.values():
        for key, value in values.items():
            if value is None or isinstance(value, scalar):
                seen.setdefault(key, None)
            else:
                nested.add(key)
    return [key for key in seen if key not in nested and key not in METRIC_KEYS]


def results_markdown(results: Mapping[str, Any], title: str | None = None) -> str:
    """Markdown of a :func:`summarize` dict: one row per category and a mean row."""
    categories = results["categories"]
    mean = results.get("mean") or summarize(categories)["mean"]
    columns = [("category", "Category"), *METRIC_COLUMNS]
    rows = [{"category": name, **values} for name, values in categories.items()]
    rows.append({"category": "mean", **mean})
    text = f"# {title}\n\n" if title else ""
    text += markdown_table(rows, columns)
    counts = mean.get("count", {})
    if counts:
        used = ", ".join(f"{header} {counts.get(key, 0)}" for key, header in METRIC_COLUMNS)
        text += (
            f"\nMean over the categories where a metric is defined ({used} "
            f"of {len(categories)}); n/a = undefined.\n"
        )
    return text


def write_results(
    out_dir: str | Path, results: Mapping[str, Any], stem: str = "results"
) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json``; returns their paths by suffix.

    ``results`` is a :func:`summarize` dict (its mean is computed when missing). The CSV has
    the four metrics first, then any other scalar per-category keys; nested values (e.g.
    ``per_defect``) are kept in the JSON only.
    """
    if "categories" not in results:
        raise ValueError(
            "results must look like {'categories': {name: metrics}, 'mean': {...}}; "
            "build it with fod.report.summarize(per_category)"
        )
    categories = results["categories"]
    full = dict(results)
    if not full.get("mean"):
        full["mean"] = summarize(categories)["mean"]
    out_dir = Path(out_dir)
    paths = {
        "md": write_text(out_dir / f"{stem}.md", results_markdown(full)),
    }
    keys = ["category", *METRIC_KEYS, *_extra_scalar_keys(categories)]
    rows = [{"category": name, **values} for name, values in categories.items()]
    mean_row = {"category": "mean", **{k: v for k, v in full["mean"].items() if k in METRIC_KEYS}}
    paths["csv"] = write_csv(out_dir / f"{stem}.csv", [*rows, mean_row], keys)
    paths["json"] = write_json(out_dir / f"{stem}.json", to_jsonable(full))
    return paths
