"""The report folder of ``fod test --report`` and ``FOD.test(report_dir=...)``.

One heat-map panel (image | ground truth | heat map) for each of the first few test images of
every type, a ``scores.csv`` of all image scores, and the training-loss plot: what a person
opens to judge a model, beside the metrics that ``results.json`` holds.

>>> write_test_report("report", category, scored, records, image_size=256, examples=3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fod.data import Category
from fod.data.images import load_image, resize_image
from fod.report.heatmaps import overlay_panel, save_png
from fod.report.plots import plot_losses
from fod.report.tables import write_csv

if TYPE_CHECKING:
    from fod.scoring import ScoredSet

#: Columns of ``scores.csv``.
SCORE_COLUMNS = ["path", "defect_type", "label", "score"]


def write_test_report(
    out: str | Path,
    category: Category,
    scored: ScoredSet,
    records: Sequence[Mapping[str, Any]],
    *,
    image_size: int,
    examples: int = 3,
    heatmap_range: tuple[float | None, float | None] = (None, None),
    history: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write the folder ``out``: ``<type>/<stem>.png`` panels of the first ``examples`` test
    images of each type, coloured on ``heatmap_range``; ``scores.csv`` with one row of
    ``records`` per image; ``losses.png`` when there is a training ``history``."""
    out = Path(out)
    vmin, vmax = heatmap_range
    picked: dict[str, int] = {}
    for i, sample in enumerate(category.test):
        kind = sample.defect_type
        if picked.get(kind, 0) >= examples:
            continue
        picked[kind] = picked.get(kind, 0) + 1
        image = resize_image(load_image(sample.image), (image_size, image_size))
        mask = scored.masks[i] if scored.has_mask[i] else None
        title = f"{kind}/{sample.image.name}"
        panel = overlay_panel(
            image, mask, scored.maps[i], float(scored.scores[i]), title, vmin, vmax
        )
        save_png(out / kind / f"{sample.image.stem}.png", panel)
    write_csv(out / "scores.csv", records, SCORE_COLUMNS)
    if history:
        plot_losses(
            [{k: v for k, v in h.items() if k != "seconds"} for h in history],
            out / "losses.png",
            title=f"training loss ({category.name})",
        )
    return out


__all__ = ["SCORE_COLUMNS", "write_test_report"]
