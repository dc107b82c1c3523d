"""End to end: the demo, generated data through the CLI, and a smoke test on real MTD data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    GENERATED,
    GENERATED_DEFECTS,
    assert_defects_outscore_normals,
    tiny_args,
    tiny_config,
)
from PIL import Image

from fod.cli.main import main
from fod.data.synthetic import generate
from fod.demo import run_demo


def test_generated_data_train_test_predict(generated: Path, tmp_path: Path) -> None:
    """Train on generated boards, test, predict: defects score clearly above normal images."""
    category = generated
    model = tmp_path / "board.pt"
    assert main(["train", str(category), "--out", str(model), *tiny_args()]) == 0
    assert main(["test", str(model), str(category), "--json", str(tmp_path / "r.json")]) == 0
    results = json.loads((tmp_path / "r.json").read_text())["categories"]["board"]
    out = tmp_path / "pred"
    assert main(["predict", str(model), str(category / "test"), "--out", str(out)]) == 0
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n = GENERATED
    assert len(rows) == n["n_test_good"] + n["n_test_per_defect"] * len(GENERATED_DEFECTS)
    scores = {"good": [], "defect": []}
    for row in rows:
        kind = "good" if "/good/" in row["path"].replace("\\", "/") else "defect"
        scores[kind].append(float(row["score"]))
    assert_defects_outscore_normals(results, scores["good"], scores["defect"])
    assert len(list(out.rglob("*.png"))) == len(rows)


def test_demo_writes_the_report(tmp_path: Path) -> None:
    """The demo pipeline with tiny sizes: tables, panels and loss plots for every category."""
    config = tiny_config(epochs=2)
    sizes = {"image_size": 64, "n_train": 8, "n_test_good": 3, "n_test_per_defect": 1}
    summary = run_demo(
        tmp_path / "demo", config, device="cpu", examples=1, progress=False,
        log=lambda _: None, data_sizes=sizes,
    )  # fmt: skip
    out = tmp_path / "demo"
    stored = json.loads((out / "results.json").read_text())
    assert set(stored["categories"]) == {"board", "fabric", "tiles"}
    for name, entry in stored["categories"].items():
        for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
            assert 0.0 <= entry[key] <= 1.0, (name, key)
        report = out / "report" / name
        assert (report / "losses.png").is_file()
        assert (report / "good").is_dir() and len(list(report.rglob("*.png"))) >= 3
        assert (out / "models" / f"{name}.pt").is_file()
    mean = np.mean([e["image_auroc"] for e in stored["categories"].values()])
    assert stored["mean"]["image_auroc"] == pytest.approx(mean)
    assert summary["categories"] == stored["categories"]
    assert "| board |" in (out / "results.md").read_text()


def test_demo_survives_undefined_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Masks that mark no pixel leave the pixel metrics undefined: the demo logs n/a."""
    import fod.data.synthetic as synthetic

    def generate_blank(*args, **kwargs) -> Path:
        out = generate(*args, **kwargs)
        for mask in out.rglob("ground_truth/*/*.png"):
            Image.new("L", Image.open(mask).size).save(mask)
        return out

    monkeypatch.setattr(synthetic, "generate", generate_blank)
    config = tiny_config(epochs=1)
    sizes = {"image_size": 64, "n_train": 4, "n_test_good": 2, "n_test_per_defect": 1}
    lines: list[str] = []
    summary = run_demo(
        tmp_path / "demo", config, device="cpu", examples=1, progress=False,
        log=lines.append, data_sizes=sizes,
    )  # fmt: skip
    assert all(e["pixel_auroc"] is None for e in summary["categories"].values())
    assert sum("pixel AUROC n/a, AUPRO n/a" in line for line in lines) == 3


def test_mtd_subset_smoke(mtd: Path, tmp_path: Path) -> None:
    """A few real magnetic-tile images (linked, not copied) through train and test."""
    category = tmp_path / "mtd"
    picks = {
        "train/good": sorted((mtd / "train" / "good").iterdir())[:12],
        "test/good": sorted((mtd / "test" / "good").iterdir())[:4],
        "test/blowhole": sorted((mtd / "test" / "blowhole").iterdir())[:3],
    }
    for folder, files in picks.items():
        (category / folder).mkdir(parents=True)
        for f in files:
            (category / folder / f.name).symlink_to(f)
    masks = category / "ground_truth" / "blowhole"
    masks.mkdir(parents=True)
    for f in picks["test/blowhole"]:
        name = f"{f.stem}_mask.png"
        (masks / name).symlink_to(mtd / "ground_truth" / "blowhole" / name)
    model = tmp_path / "mtd.pt"
    assert main(["train", str(category), "--out", str(model), *tiny_args(epochs=1)]) == 0
    assert main(["test", str(model), str(category), "--json", str(tmp_path / "r.json")]) == 0
    entry = json.loads((tmp_path / "r.json").read_text())["categories"]["mtd"]
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= entry[key] <= 1.0
