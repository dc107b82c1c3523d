"""End to end on a tiny generated data set: the Python API and the `fod` command."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    GENERATED,
    GENERATED_DEFECTS,
    TINY,
    assert_defects_outscore_normals,
    tiny_args,
)

import fod
from fod.api import FOD, NotFittedError, Prediction
from fod.cli.main import build_parser, main
from fod.training.validation import THRESHOLD_RULE

S = TINY["image_size"]
DEFECT = GENERATED_DEFECTS[0]  # one defect type folder of the generated category
NUM_TEST = GENERATED["n_test_good"] + GENERATED["n_test_per_defect"] * len(GENERATED_DEFECTS)


@pytest.fixture(scope="module")
def api_model(generated: Path) -> FOD:
    return FOD(device="cpu", progress=False, **TINY).fit(generated)


@pytest.fixture(scope="module")
def cli_model(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "board.pt"
    assert main(["train", str(generated), "--out", str(out), *tiny_args(), "--device", "cpu"]) == 0
    return out


def check_results_shape(results: dict, names: list[str]) -> None:
    assert set(results) == {"categories", "mean"}
    assert list(results["categories"]) == names
    for entry in [*results["categories"].values(), results["mean"]]:
        for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
            assert isinstance(entry[key], float) and 0.0 <= entry[key] <= 1.0


# ------------------------------------------------------------------------------- API


def test_lazy_exports() -> None:
    assert fod.FOD is FOD
    assert fod.FODConfig().image_size == 256


def test_api_fit_test_predict(api_model: FOD, generated: Path, tmp_path: Path) -> None:
    model = api_model
    assert model.is_fitted and model.config.image_size == S
    stats = model.stats
    # the threshold best separates held-out good images from synthetic anomalies: one of
    # the held-out scores, so never above the largest
    assert model.threshold == pytest.approx(stats["validation"]["threshold"])
    assert model.threshold <= stats["train_score_max"]
    assert stats["pixel_p1"] < stats["pixel_p99"]
    # with so few good images the head is cross-fitted: the transformers train on every one,
    # and every one is held out once, by one of 5 folds of heads (a slice would hold 3)
    n = GENERATED["n_train"]
    assert (stats["num_train"], stats["num_holdout"]) == (n, n)
    assert (stats["calibration"], stats["folds"]) == ("crossfit", 5)
    assert stats["validation"]["good_images"] == n
    assert stats["threshold_rule"] == THRESHOLD_RULE
    assert len(model.history) == TINY["epochs"]

    results = model.test(generated, report_dir=tmp_path / "report", examples=2)
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "per_defect", "images"):
        assert key in results
    good = [r["score"] for r in results["images"] if r["defect_type"] == "good"]
    defect = [r["score"] for r in results["images"] if r["defect_type"] != "good"]
    assert_defects_outscore_normals(results, good, defect)
    report = tmp_path / "report"
    for kind in ("good", *GENERATED_DEFECTS):
        assert len(list((report / kind).glob("*.png"))) == 2, kind
    assert (report / "scores.csv").is_file() and (report / "losses.png").is_file()

    preds = model.predict([generated / "test" / DEFECT, generated / "test" / "good" / "000.png"])
    assert len(preds) == GENERATED["n_test_per_defect"] + 1 and all(
        isinstance(p, Prediction) for p in preds
    )
    assert preds[0].heatmap.shape == (S, S) and preds[0].heatmap.dtype == np.float32
    assert all(p.anomalous == (p.score > model.threshold) for p in preds)
    assert all(p.anomalous for p in model.predict(generated / "test", threshold=-1.0))
    panel = model.panel(preds[0])
    assert panel.dtype == np.uint8 and panel.shape[1] < 3 * S


def test_api_save_load_round_trip(api_model: FOD, generated: Path, tmp_path: Path) -> None:
    path = api_model.save(tmp_path / "m.pt")
    loaded = FOD.load(path, device="cpu", progress=False)
    assert loaded.config == api_model.config and loaded.threshold == api_model.threshold
    assert loaded.stats["pixel_p99"] == api_model.stats["pixel_p99"]
    a = api_model.predict(generated / "test")
    b = loaded.predict(generated / "test")
    assert [p.score for p in a] == [p.score for p in b]
    assert all(np.array_equal(x.heatmap, y.heatmap) for x, y in zip(a, b, strict=True))
    with pytest.raises(fod.errors.CheckpointError, match="image_size"):
        FOD.load(path, image_size=128)
    assert FOD.load(path, threshold=7.0, progress=False).threshold == 7.0


def test_api_errors(generated: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFittedError):
        FOD().predict(generated)
    with pytest.raises(fod.config.ConfigError, match="did you mean 'epochs'"):
        FOD(epoch=3)
    with pytest.raises(fod.errors.DataError, match="not found"):
        FOD(**TINY).fit(tmp_path / "nowhere")


def test_api_fits_a_plain_folder_of_good_images(generated: Path) -> None:
    model = FOD(device="cpu", progress=False, **{**TINY, "epochs": 1})
    model.fit(generated / "train" / "good")
    stats = model.stats
    assert stats["num_train"] == stats["num_holdout"] == GENERATED["n_train"]  # cross-fitted
    sliced = FOD(device="cpu", progress=False, **{**TINY, "epochs": 1, "calibration": "holdout"})
    stats = sliced.fit(generated / "train" / "good").stats
    assert stats["num_train"] + stats["num_holdout"] == GENERATED["n_train"]
    assert (stats["calibration"], stats["folds"]) == ("holdout", 0)


# ------------------------------------------------------------------------------- CLI


def test_cli_train_leaves_model_and_no_state(cli_model: Path) -> None:
    assert cli_model.is_file()
    assert not cli_model.with_name("board.state.pt").exists()


def test_cli_test_json_and_report(
    cli_model: Path, generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out_json = tmp_path / "r.json"
    report = tmp_path / "rep"
    rc = main(
        ["test", str(cli_model), str(generated), "--json", str(out_json), "--report", str(report)]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"| {DEFECT} |" in printed and "| all |" in printed
    results = json.loads(out_json.read_text())
    check_results_shape(results, ["board"])
    entry = results["categories"]["board"]
    assert entry["per_defect"][DEFECT]["count"] == GENERATED["n_test_per_defect"]
    for kind in ("good", *GENERATED_DEFECTS):
        assert len(list((report / kind).glob("*.png"))) == 3, kind
    with (report / "scores.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    good = [float(r["score"]) for r in rows if r["defect_type"] == "good"]
    defect = [float(r["score"]) for r in rows if r["defect_type"] != "good"]
    assert_defects_outscore_normals(entry, good, defect)


def test_cli_predict(cli_model: Path, generated: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    assert (
        main(["predict", str(cli_model), str(generated / "test"), "--out", str(out), "--quiet"])
        == 0
    )
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == NUM_TEST
    assert {Path(r["heatmap"]).name for r in rows} >= {f"{DEFECT}__000.png", "good__000.png"}
    assert all(Path(r["heatmap"]).is_file() for r in rows)
    single = generated / "test" / DEFECT / "001.png"
    rc = main(
        [
            *("predict", str(cli_model), str(single), "--out", str(out / "j")),
            *("--format", "json", "--threshold", "-1", "--quiet"),
        ]
    )
    assert rc == 0
    payload = json.loads((out / "j" / "predictions.json").read_text())
    assert payload["threshold"] == -1.0
    assert payload["predictions"][0]["anomalous"] is True
    assert (out / "j" / "heatmaps" / "001.png").is_file()


def test_cli_errors(
    cli_model: Path, generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "m.pt"), *tiny_args()])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "data folder not found" in err
    assert "Traceback" not in err

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert main(["test", str(bad), str(generated)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "cannot read this model file" in err

    image = generated / "test" / "good" / "000.png"
    assert main(["predict", str(image), str(image)]) == 2
    assert "it is an image, not a model file" in capsys.readouterr().err

    assert main(["test", str(cli_model), str(generated), "--image-size", "128"]) == 2
    err = capsys.readouterr().err
    assert "image_size" in err and "64" in err and "128" in err

    args = ["train", str(generated), "--out", str(tmp_path / "m.pt"), *tiny_args(heads=3)]
    assert main(args) == 2
    assert "divisible by heads" in capsys.readouterr().err
    assert main(["train", str(generated), "--out", str(tmp_path / "m.pt"), "--device", "tpu"]) == 2
    assert "error: " in capsys.readouterr().err
    assert main(["nonsense"]) == 2
    assert main(["--help"]) == 0


def test_cli_state_needs_resume(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "m.pt"
    args = ["train", str(generated), "--out", str(out), *tiny_args(epochs=1)]

    def crash(self, path, **kwargs):  # an interruption after the last epoch, before the save
        raise KeyboardInterrupt

    monkeypatch.setattr(FOD, "save", crash)
    assert main(args) == 130
    monkeypatch.undo()
    state = tmp_path / "m.state.pt"
    assert state.is_file() and not out.exists()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and str(state) in err
    assert main([*args, "--resume"]) == 0
    assert out.is_file() and not state.exists()


def test_cli_benchmark_and_resume(
    generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "bench_data"
    shutil.copytree(generated, root / "alpha")
    shutil.copytree(generated, root / "beta")
    out = tmp_path / "bench"
    summary = tmp_path / "summary.json"
    args = ["benchmark", str(root), "--out", str(out), *tiny_args(epochs=1)]
    assert main([*args, "--json", str(summary)]) == 0
    for suffix in ("md", "csv", "json"):
        assert (out / f"results.{suffix}").is_file()
    results = json.loads(summary.read_text())
    check_results_shape(results, ["alpha", "beta"])
    assert json.loads((out / "results.json").read_text())["categories"].keys() == {"alpha", "beta"}
    capsys.readouterr()

    (out / "beta" / "result.json").unlink()  # as if interrupted while testing beta
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "alpha: done before, skipped" in printed and "beta: model exists" in printed

    other = ["benchmark", str(root), "--out", str(out), *tiny_args(epochs=2)]
    assert main(other) == 2  # other settings, same output folder
    assert "other settings" in capsys.readouterr().err


def test_cli_generate(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    rc = main(
        [
            *("generate", str(out), "--categories", "fabric", "--image-size", "48"),
            *("--n-train", "2", "--n-test-good", "1", "--n-test-per-defect", "1", "--seed", "3"),
        ]
    )
    assert rc == 0
    assert len(list((out / "fabric" / "train" / "good").glob("*.png"))) == 2
    assert (out / "fabric" / "ground_truth").is_dir()


def test_parser_registry_is_extensible() -> None:
    parser = build_parser(["fod.cli.commands.generate"])
    args = parser.parse_args(["generate", "x"])
    assert args.command == "generate" and callable(args._run)
