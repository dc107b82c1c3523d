"""Report: heat-map overlays, result tables (Markdown, CSV, JSON) and loss plots."""

from fod.report.folder import write_test_report
from fod.report.heatmaps import (
    PanelGeometry,
    colorize,
    mask_outline,
    normalize,
    overlay_panel,
    panel_geometry,
    save_png,
    text_height,
)
from fod.report.plots import loss_series, plot_losses
from fod.report.tables import (
    METRIC_COLUMNS,
    METRIC_KEYS,
    csv_text,
    format_value,
    markdown_table,
    metrics_line,
    results_markdown,
    summarize,
    to_jsonable,
    write_csv,
    write_results,
)

__all__ = [
    "METRIC_COLUMNS",
    "METRIC_KEYS",
    "PanelGeometry",
    "colorize",
    "csv_text",
    "format_value",
    "loss_series",
    "markdown_table",
    "mask_outline",
    "metrics_line",
    "normalize",
    "overlay_panel",
    "panel_geometry",
    "plot_losses",
    "results_markdown",
    "save_png",
    "summarize",
    "text_height",
    "to_jsonable",
    "write_csv",
    "write_results",
    "write_test_report",
]
