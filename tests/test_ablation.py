"""`fod ablate` on a tiny generated category: all rows, the table files, and resuming."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_args, tiny_config
from PIL import Image

from fod.cli.main import main
from fod.experiments.ablation import run_ablation
from fod.experiments.ablation_rows import ablation_rows, paper_rows

ROWS = ["patch", "intra_noent_div", "inter_coreset", "full", "head_nearest_random_bank",
        "head_feature_nearest", "head_residual_nearest", "head_residual_nearest_validated_single",
        "head_residual_nearest_validated", "head_residual_nearest_validated_segmenter",
        "head_residual_nearest_pooled_validated_segmenter",
        "head_residual_nearest_pooled_validated_segmenter_anywhere",
        "head_residual_nearest_pooled_validated_segmenter_whole_band",
        "head_residual_nearest_pooled_validated_segmenter_likelihood_shrinkage",
        "head_residual_nearest_pooled_wide_validated_segmenter",
        "head_residual_nearest_validated_segmenter_pooled"]  # fmt: skip
VALIDATED, SINGLE = "head_residual_nearest_validated", "head_residual_nearest_validated_single"
SEGMENTED = "head_residual_nearest_validated_segmenter"
TWO_GRAINS = "head_residual_nearest_pooled_validated_segmenter"
THREE_GRAINS = "head_residual_nearest_pooled_wide_validated_segmenter"
ANYWHERE = "head_residual_nearest_pooled_validated_segmenter_anywhere"
WHOLE_BAND = "head_residual_nearest_pooled_validated_segmenter_whole_band"
LIKELIHOOD = "head_residual_nearest_pooled_validated_segmenter_likelihood_shrinkage"


def _chosen(out: Path, key: str) -> str | float | None:
    """The shrinkage the row's validation chose (None: the row has no validation)."""
    return json.loads((out / "rows" / f"{key}.json").read_text())["shrinkage"]


@pytest.fixture(scope="module")
def ablation(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("ablation")
    args = ["ablate", str(generated), "--out", str(out), *tiny_args(epochs=2)]
    assert main([*args, "--coreset-size", "2", "--rows", *ROWS]) == 0
    return generated, out


def test_rows_match_the_paper_table() -> None:
    rows = paper_rows()
    assert [r.key for r in ablation_rows()][: len(rows)] == [r.key for r in rows]
    assert [r.key for r in rows] == [
        "patch", "intra_noent_div", "intra_div", "intra_recdiv",
        "inter_mean", "inter_coreset", "intra_inter_div", "full",
    ]  # fmt: skip
    full = rows[-1]
    assert full.variant.intra and full.variant.inter and full.variant.entropy
    assert (full.paper_mvtec, full.paper_mean) == (0.992, 0.945)
    assert not rows[1].variant.entropy and rows[1].variant.score == "div"
    assert rows[5].variant.reference == "coreset"
    assert rows[0].variant.score == "rec" and not rows[0].variant.has_correlation


def test_table_files_agree_with_the_row_results(ablation: tuple[Path, Path]) -> None:
    _, out = ablation
    report = json.loads((out / "ablation.json").read_text())
    assert [r["key"] for r in report["rows"]] == ROWS
    for record in report["rows"]:
        stored = json.loads((out / "rows" / f"{record['key']}.json").read_text())
        assert stored["record"] == record
        assert stored["config"]["variant"]["intra"] == record["variant"]["intra"]
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert 0.0 <= record[key] <= 1.0
        assert record["train_seconds"] > 0
    coreset = json.loads((out / "rows" / "inter_coreset.json").read_text())
    assert coreset["config"]["variant"]["coreset_size"] == 2
    with open(out / "ablation.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["views"] for r in table] == ["patch-wise", "intra", "inter"] + [
        "patch + intra + inter"
    ] * 13
    assert float(table[3]["image_auroc"]) == pytest.approx(report["rows"][3]["image_auroc"])
    assert float(table[3]["paper_mvtec"]) == 0.992
    # paper rows: the paper's head on every image; head rows: the parts they name, calibrated
    full = json.loads((out / "rows" / "full.json").read_text())["config"]
    assert full["head"] == "paper" and full["holdout"] == 0.0 and full["segmenter"] is False
    for key, parts in (("head_feature_nearest", ["feature", "nearest"]),
                       ("head_residual_nearest", ["residual", "nearest"])):  # fmt: skip
        stored = json.loads((out / "rows" / f"{key}.json").read_text())["config"]
        assert stored["head"] == "calibrated" and stored["head_parts"] == parts
        assert stored["holdout"] > 0 and stored["validation"] == "none"
        assert stored["bank_selection"] == "coverage"
    random_bank = json.loads((out / "rows" / "head_nearest_random_bank.json").read_text())
    assert random_bank["config"]["bank_selection"] == "random"
    assert random_bank["record"]["score"] == "calibrated nearest, random bank"
    # validation weighs the levels of the image score and chooses the Gaussian's shrinkage:
    # with the likelihood's shrinkage, the same heat maps
    rows = {r["key"]: r for r in report["rows"]}
    validated = json.loads((out / "rows" / f"{VALIDATED}.json").read_text())["config"]
    assert validated["validation"] == "synthetic" and validated["segmenter"] is False
    assert validated["image_rule"] == "auto"
    single = json.loads((out / "rows" / f"{SINGLE}.json").read_text())
    assert single["config"]["image_rule"] == "single" and single["config"]["segmenter"] is False
    assert single["record"]["score"] == "calibrated residual + nearest, validated, single weighting"
    assert _chosen(out, "head_residual_nearest") is None
    for key in ("pixel_auroc", "aupro"):
        for row in (SINGLE, VALIDATED):
            if _chosen(out, row) == "likelihood":
                assert rows[row][key] == pytest.approx(rows["head_residual_nearest"][key], abs=1e-9)
    # the segmenter adds to the heat map only: the same image scores, other heat maps
    segmented = json.loads((out / "rows" / f"{SEGMENTED}.json").read_text())
    assert segmented["config"]["segmenter"] is True and segmented["config"]["nearest_pool"] == 1
    assert segmented["record"]["score"] == "calibrated residual + nearest, validated, segmenter"
    assert rows[SEGMENTED]["image_auroc"] == pytest.approx(rows[VALIDATED]["image_auroc"], abs=1e-9)
    assert rows[SEGMENTED]["pixel_auroc"] != pytest.approx(rows[VALIDATED]["pixel_auroc"], abs=1e-9)
    # the pooled row differs from the default's only in the nearest part's local average
    pooled = json.loads((out / "rows" / f"{ROWS[-1]}.json").read_text())
    assert pooled["config"] == {**segmented["config"], "nearest_pool": 3}
    assert pooled["record"]["score"].endswith("segmenter, nearest on 3 x 3 averages")
    # the default's pooled part adds to the heat map only: the same image scores
    two = json.loads((out / "rows" / f"{TWO_GRAINS}.json").read_text())
    assert two["config"] == {**segmented["config"], "head_parts": ["residual", "nearest", "pooled"]}
    assert two["record"]["score"] == "calibrated residual + nearest + pooled, validated, segmenter"
    two_row, segmented_row = rows[TWO_GRAINS], rows[SEGMENTED]
    assert two_row["image_auroc"] == pytest.approx(segmented_row["image_auroc"], abs=1e-9)
    assert two_row["aupro"] != pytest.approx(segmented_row["aupro"], abs=1e-9)
    # anomalies anywhere (the validation's and the segmenter's): the placement alone differs
    anywhere = json.loads((out / "rows" / f"{ANYWHERE}.json").read_text())
    assert two["config"]["anomaly_placement"] == "content"
    assert anywhere["config"] == {**two["config"], "anomaly_placement": "anywhere"}
    assert anywhere["record"]["score"] == f"{two['record']['score']}, anomalies anywhere"
    assert rows[ANYWHERE]["aupro"] != pytest.approx(two_row["aupro"], abs=1e-9)
    # every weighting of the band in the image score: the band's members alone differ
    whole = json.loads((out / "rows" / f"{WHOLE_BAND}.json").read_text())
    assert two["config"]["band_members"] == "simplest"
    assert whole["config"] == {**two["config"], "band_members": "all"}
    assert whole["record"]["score"] == f"{two['record']['score']}, whole band"
    if _chosen(out, WHOLE_BAND) == _chosen(out, TWO_GRAINS):
        for key in ("pixel_auroc", "aupro"):
            assert rows[WHOLE_BAND][key] == pytest.approx(two_row[key], abs=1e-9)
    # the likelihood's shrinkage: the choice alone differs, and is the likelihood's
    likelihood = json.loads((out / "rows" / f"{LIKELIHOOD}.json").read_text())
    assert two["config"]["shrinkage"] == "validation"
    assert likelihood["config"] == {**two["config"], "shrinkage": "likelihood"}
    assert likelihood["record"]["score"] == f"{two['record']['score']}, likelihood shrinkage"
    assert likelihood["shrinkage"] == "likelihood" and _chosen(out, TWO_GRAINS) is not None
    if _chosen(out, TWO_GRAINS) == "likelihood":
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert rows[LIKELIHOOD][key] == pytest.approx(two_row[key], abs=1e-9)
    # the wide part (an option) adds to the default's heat map only
    three = json.loads((out / "rows" / f"{THREE_GRAINS}.json").read_text())
    assert three["config"] == {
        **two["config"],
        "head_parts": [*two["config"]["head_parts"], "wide"],
    }
    assert three["record"]["score"] == (
        "calibrated residual + nearest + pooled + wide, validated, segmenter"
    )
    assert rows[THREE_GRAINS]["image_auroc"] == pytest.approx(two_row["image_auroc"], abs=1e-9)
    assert rows[THREE_GRAINS]["pixel_auroc"] != pytest.approx(two_row["pixel_auroc"], abs=1e-9)
    assert not (out / "rows" / "calibrated.state.pt").exists()
    md = (out / "ablation.md").read_text()
    assert "| patch + intra + inter | with | mean | Rec & Div |" in md


def test_rerun_redoes_nothing(ablation: tuple[Path, Path], capsys) -> None:
    data, out = ablation
    before = {p.name: p.stat().st_mtime_ns for p in (out / "rows").glob("*.json")}
    args = ["ablate", str(data), "--out", str(out), *tiny_args(epochs=2)]
    assert main([*args, "--coreset-size", "2", "--rows", *ROWS]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "rows").glob("*.json")}
    assert before == after
    assert capsys.readouterr().out.count("done before, skipped") == len(ROWS)


def test_rows_made_with_other_settings_are_refused(ablation: tuple[Path, Path], capsys) -> None:
    data, out = ablation
    args = ["ablate", str(data), "--out", str(out), *tiny_args(epochs=3), "--rows", "patch"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "patch.json: this row was made with other settings" in err
    assert "epochs: there 2, now 3" in err


def blank_masks(category: Path) -> None:
    """Empty every defect mask: the pixel metrics become undefined (None)."""
    for mask in (category / "ground_truth").rglob("*.png"):
        Image.new("L", Image.open(mask).size).save(mask)


def test_undefined_metrics_print_as_na(generated: Path, tmp_path: Path) -> None:
    """A category whose masks mark no pixel: pixel AUROC and AUPRO are None, and the progress
    line says n/a where formatting None as a float used to crash."""
    data = shutil.copytree(generated, tmp_path / "board")
    blank_masks(data)
    lines: list[str] = []
    report = run_ablation(
        data, tmp_path / "out", tiny_config(epochs=1), rows=["patch"], device="cpu",
        progress=False, log=lines.append,
    )  # fmt: skip
    row = report["rows"][0]
    assert row["pixel_auroc"] is None and row["aupro"] is None
    assert isinstance(row["image_auroc"], float)
    assert any("pixel AUROC n/a, AUPRO n/a" in line for line in lines)
