"""Report: overlay panel layout and pixels, files written atomically, tables read back."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from fod.report import (
    colorize,
    markdown_table,
    mask_outline,
    metrics_line,
    overlay_panel,
    panel_geometry,
    plot_losses,
    save_png,
    summarize,
    text_height,
    write_csv,
    write_results,
)

H, W = 48, 64


def _image() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return np.stack([xx * 3 % 256, yy * 5 % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)


def _mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[10:20, 30:45] = True
    return mask


def _heatmap() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return np.exp(-((yy - 15.0) ** 2 + (xx - 37.0) ** 2) / 50.0)


# ---------------------------------------------------------------------------------------------
# overlay panels


def test_panel_layout_and_image_panel_is_the_input() -> None:
    img = _image()
    panel = overlay_panel(img, _mask(), _heatmap(), margin=4)
    assert panel.dtype == np.uint8
    assert panel.shape == (H, 3 * W + 2 * 4, 3)
    np.testing.assert_array_equal(panel[:, :W], img)

    titled = overlay_panel(img, _mask(), _heatmap(), score=0.87654, title="bottle 003")
    geo = panel_geometry(H, W, has_text=True)
    assert titled.shape == geo.shape == (H + text_height(H), 3 * W + 8, 3)
    np.testing.assert_array_equal(titled[geo.top :, geo.lefts[0] : geo.lefts[0] + W], img)
    band = titled[: geo.top]
    assert (band < 128).any(), "the score text is drawn in the band"


def test_two_panel_mode_is_the_three_panel_picture_without_ground_truth() -> None:
    """image | heat map: the image and heat-map panels of the full picture, side by side under
    the same text band, cut to the narrower width."""
    img = _image()
    full = overlay_panel(img, _mask(), _heatmap(), score=0.5, title="part 7")
    two = overlay_panel(img, _mask(), _heatmap(), score=0.5, title="part 7", ground_truth=False)
    geo = panel_geometry(H, W, has_text=True, panels=2)
    assert two.shape == geo.shape == (H + text_height(H), 2 * W + 4, 3)
    three = panel_geometry(H, W, has_text=True)
    np.testing.assert_array_equal(two[: geo.top], full[: geo.top, : geo.width])
    body = full[geo.top :]
    np.testing.assert_array_equal(two[geo.top :, : three.lefts[1]], body[:, : three.lefts[1]])
    np.testing.assert_array_equal(two[geo.top :, geo.lefts[1] :], body[:, three.lefts[2] :])


def test_mask_outline_appears_where_the_mask_is() -> None:
    img, mask = _image(), _mask()
    panel = overlay_panel(img, mask, _heatmap())
    geo = panel_geometry(H, W, has_text=False)
    gt = panel[:, geo.lefts[1] : geo.lefts[1] + W]
    outline = mask_outline(mask)
    assert outline.sum() == 2 * (10 + 15) - 4
    assert (gt[outline] == (255, 0, 0)).all()
    assert not (gt[mask & ~outline] == img[mask & ~outline]).all()  # filled translucent
    np.testing.assert_array_equal(gt[~mask], img[~mask])  # untouched outside the mask


def test_panel_for_good_images_says_so() -> None:
    img = _image()
    for mask in (None, np.zeros((H, W), dtype=bool)):
        panel = overlay_panel(img, mask, _heatmap())
        gt = panel[:, W + 4 : 2 * W + 4]
        same = (gt == np.round(img * 0.5)).all(axis=-1)  # dimmed to half ...
        assert 0.5 < same.mean() < 1.0  # ... except for the note in the middle
        assert not same[H // 2].all() and same[0].all()


def test_heat_panel_colours_are_comparable_with_fixed_range() -> None:
    img = np.zeros((H, W, 3), dtype=np.uint8)
    left = 2 * W + 8
    low = np.full((H, W), 0.5)
    low[0, 0] = 0.0
    high = np.full((H, W), 0.5)
    high[0, 0] = 1.0
    fixed = [overlay_panel(img, None, m, vmin=0, vmax=1, alpha=1.0) for m in (low, high)]
    np.testing.assert_array_equal(fixed[0][5:, left + 5 :], fixed[1][5:, left + 5 :])
    own = [overlay_panel(img, None, m, alpha=1.0) for m in (low, high)]
    assert not np.array_equal(own[0][5:, left + 5 :], own[1][5:, left + 5 :])
    np.testing.assert_array_equal(fixed[0][10, left + 10], colorize(np.array([[0.5]]), 0, 1)[0, 0])


def test_heatmap_and_mask_of_other_size_are_resized() -> None:
    small_map = _heatmap()[::4, ::4]
    small_mask = _mask()[::2, ::2]
    panel = overlay_panel(_image(), small_mask, small_map)
    assert panel.shape == (H, 3 * W + 8, 3)
    gray = overlay_panel(_image()[..., 0], None, _heatmap())
    assert gray.shape == panel.shape


def test_save_png_roundtrip(tmp_path: Path) -> None:
    panel = overlay_panel(_image(), _mask(), _heatmap(), score=0.5)
    path = save_png(tmp_path / "sub" / "panel.png", panel)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (panel.shape[1], panel.shape[0])
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), panel)
    assert [p.name for p in path.parent.iterdir()] == ["panel.png"]  # no temp file left
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "bad.png", panel.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# tables


def _per_category() -> dict[str, dict]:
    return {
        "bottle": {"image_auroc": 1.0, "pixel_auroc": 0.98123, "aupro": 0.9456, "f1_max": 0.99},
        "cable": {"image_auroc": 0.9712, "pixel_auroc": None, "aupro": None, "f1_max": 0.93},
        "wood": {
            "image_auroc": np.float64(0.9891),
            "pixel_auroc": 0.9312,
            "aupro": 0.8865,
            "f1_max": 0.95,
            "f1_threshold": 1.25,
            "per_defect": {"hole": {"image_auroc": 1.0}},
        },
    }


def test_summarize_means_ignore_none() -> None:
    res = summarize(_per_category())
    mean = res["mean"]
    assert mean["image_auroc"] == pytest.approx(np.mean([1.0, 0.9712, 0.9891]))
    assert mean["aupro"] == pytest.approx(np.mean([0.9456, 0.8865]))
    assert mean["count"] == {"image_auroc": 3, "pixel_auroc": 2, "aupro": 2, "f1_max": 3}
    assert mean["categories"] == 3
    assert summarize({"a": {"aupro": None}})["mean"]["aupro"] is None


def _markdown_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| Category"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_write_results_markdown_csv_json(tmp_path: Path) -> None:
    per_category = _per_category()
    res = summarize(per_category)
    paths = write_results(tmp_path, res, stem="mvtec")
    assert {k: p.name for k, p in paths.items()} == {
        "md": "mvtec.md",
        "csv": "mvtec.csv",
        "json": "mvtec.json",
    }
    keys = ["image_auroc", "pixel_auroc", "aupro", "f1_max"]

    md = _markdown_rows(paths["md"].read_text())
    assert list(md) == ["bottle", "cable", "wood", "mean"]
    for name, values in per_category.items():
        expected = ["n/a" if values[k] is None else f"{values[k]:.3f}" for k in keys]
        assert md[name] == expected
    for key, cell in zip(keys, md["mean"], strict=True):
        defined = [v[key] for v in per_category.values() if v[key] is not None]
        assert cell == f"{np.mean(defined):.3f}"

    with paths["csv"].open(newline="") as f:
        rows = {r["category"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["bottle", "cable", "wood", "mean"]
    for name, values in per_category.items():
        for key in keys:
            cell = rows[name][key]
            if values[key] is None:
                assert cell == "n/a"
            else:
                assert float(cell) == values[key]
    assert float(rows["wood"]["f1_threshold"]) == 1.25 and rows["bottle"]["f1_threshold"] == ""
    assert "per_defect" not in rows["wood"]
    for key in keys:
        assert float(rows["mean"][key]) == res["mean"][key]

    data = json.loads(paths["json"].read_text())
    assert data["categories"]["cable"]["pixel_auroc"] is None
    assert data["categories"]["wood"]["image_auroc"] == 0.9891
    assert data["categories"]["wood"]["per_defect"]["hole"]["image_auroc"] == 1.0
    assert data["mean"]["aupro"] == res["mean"]["aupro"]


def test_write_results_computes_missing_mean(tmp_path: Path) -> None:
    paths = write_results(tmp_path, {"categories": {"a": {"image_auroc": float("nan")}}})
    assert "n/a" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["categories"]["a"]["image_auroc"] is None
    with pytest.raises(ValueError, match="summarize"):
        write_results(tmp_path, {"a": {"image_auroc": 1.0}})


def test_generic_markdown_and_csv(tmp_path: Path) -> None:
    rows = [{"variant": "full", "auroc": 0.98765, "steps": 10}, {"variant": "a|b", "auroc": None}]
    text = markdown_table(rows, [("variant", "Variant"), ("auroc", "AUROC"), ("steps", "Steps")])
    lines = text.splitlines()
    assert lines[0] == "| Variant | AUROC | Steps |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| full | 0.988 | 10 |"
    assert lines[3] == "| a\\|b | n/a | n/a |"
    path = write_csv(tmp_path / "t.csv", rows, [("variant", "Variant"), ("auroc", "AUROC")])
    with path.open(newline="") as f:
        read = list(csv.DictReader(f))
    assert read == [{"variant": "full", "auroc": "0.98765"}, {"variant": "a|b", "auroc": "n/a"}]


# ---------------------------------------------------------------------------------------------
# loss plots


@pytest.mark.parametrize(
    "history",
    [
        [{"epoch": e, "loss": 1 / e, "div": -0.1 * e, "ent": 0.5} for e in range(1, 11)],
        {"loss": [1.0, 0.5, 0.25, float("inf"), 0.1], "rec": [0.3, 0.2, 0.1, 0.05, 0.01]},
        [],
    ],
)
def test_plot_losses_writes_png_without_touching_pyplot(history, tmp_path: Path) -> None:
    had_pyplot = "matplotlib.pyplot" in sys.modules
    backend = dict.__getitem__(matplotlib.rcParams, "backend")  # without resolving it
    path = plot_losses(history, tmp_path / "losses.png", title="bottle", log_y=True, dpi=50)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (350, 200)
        assert len(np.unique(np.asarray(im.convert("L")))) > 2
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot
    assert [p.name for p in tmp_path.iterdir()] == ["losses.png"]


def test_metrics_line_shows_undefined_metrics_as_na() -> None:
    metrics = {"image_auroc": np.float64(0.8125), "pixel_auroc": None, "aupro": float("nan")}
    assert metrics_line(metrics) == "image AUROC 0.812, pixel AUROC n/a, AUPRO n/a"
