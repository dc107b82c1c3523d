"""End to end on a tiny generated data set: the Python API and the `fod` command."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fod
from fod.api import FOD, NotFittedError, Prediction
from fod.cli.main import build_parser, main

S = 64
TRAIN = [
    "--backbone",
    "efficientnet_lite0",
    "--image-size",
    str(S),
    "--d-model",
    "32",
    "32",
    "--heads",
    "2",
    "--num-layers",
    "1",
    "--epochs",
    "4",
    "--batch-size",
    "4",
    "--quiet",
]
OPTIONS = dict(
    backbone="efficientnet_lite0",
    image_size=S,
    d_model=(32, 32),
    heads=2,
    num_layers=1,
    epochs=4,
    batch_size=4,
)


def texture(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    phase = rng.uniform(0, 2 * np.pi)
    base = 0.5 + 0.12 * np.sin(xx / 3.0 + phase) * np.cos(yy / 4.0 + phase / 2)
    img = np.stack([base, 0.9 * base, 0.8 * base], axis=-1) + rng.normal(0, 0.02, (S, S, 3))
    return img


def save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)


def make_category(root: Path, seed: int = 0) -> Path:
    """16 good training images of a smooth texture; 4 good and 4 blob-defect test images."""
    rng = np.random.default_rng(seed)
    for i in range(16):
        save(texture(rng), root / "train" / "good" / f"{i:03d}.png")
    for i in range(4):
        save(texture(rng), root / "test" / "good" / f"{i:03d}.png")
    yy, xx = np.mgrid[:S, :S]
    for i in range(4):
        img = texture(rng)
        cy, cx = rng.integers(18, S - 18, 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= 49
        img[mask] = (1.0, 1.0, 0.95)
        save(img, root / "test" / "blob" / f"{i:03d}.png")
        path = root / "ground_truth" / "blob" / f"{i:03d}_mask.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_category(tmp_path_factory.mktemp("data") / "widget")


@pytest.fixture(scope="module")
def api_model(data: Path) -> FOD:
    return FOD(device="cpu", progress=False, **OPTIONS).fit(data)


@pytest.fixture(scope="module")
def cli_model(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "widget.pt"
    assert main(["train", str(data), "--out", str(out), *TRAIN, "--device", "cpu"]) == 0
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


def test_api_fit_test_predict(api_model: FOD, data: Path, tmp_path: Path) -> None:
    model = api_model
    assert model.is_fitted and model.config.image_size == S
    stats = model.stats
    assert model.threshold == pytest.approx(stats["train_score_max"])
    assert stats["pixel_p1"] < stats["pixel_p99"] and stats["num_train"] == 16
    assert len(model.history) == 4

    results = model.test(data, report_dir=tmp_path / "report", examples=2)
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "per_defect", "images"):
        assert key in results
    scores = {
        t: [r["score"] for r in results["images"] if r["defect_type"] == t]
        for t in ("good", "blob")
    }
    assert np.mean(scores["blob"]) > np.mean(scores["good"])
    assert results["image_auroc"] > 0.5
    report = tmp_path / "report"
    assert len(list((report / "good").glob("*.png"))) == 2
    assert len(list((report / "blob").glob("*.png"))) == 2
    assert (report / "scores.csv").is_file() and (report / "losses.png").is_file()

    preds = model.predict([data / "test" / "blob", data / "test" / "good" / "000.png"])
    assert len(preds) == 5 and all(isinstance(p, Prediction) for p in preds)
    assert preds[0].heatmap.shape == (S, S) and preds[0].heatmap.dtype == np.float32
    assert all(p.anomalous == (p.score > model.threshold) for p in preds)
    assert all(p.anomalous for p in model.predict(data / "test", threshold=-1.0))
    panel = model.panel(preds[0])
    assert panel.dtype == np.uint8 and panel.shape[1] < 3 * S


def test_api_save_load_round_trip(api_model: FOD, data: Path, tmp_path: Path) -> None:
    path = api_model.save(tmp_path / "m.pt")
    loaded = FOD.load(path, device="cpu", progress=False)
    assert loaded.config == api_model.config and loaded.threshold == api_model.threshold
    assert loaded.stats["pixel_p99"] == api_model.stats["pixel_p99"]
    a = api_model.predict(data / "test")
    b = loaded.predict(data / "test")
    assert [p.score for p in a] == [p.score for p in b]
    assert all(np.array_equal(x.heatmap, y.heatmap) for x, y in zip(a, b, strict=True))
    with pytest.raises(fod.errors.CheckpointError, match="image_size"):
        FOD.load(path, image_size=128)
    assert FOD.load(path, threshold=7.0, progress=False).threshold == 7.0


def test_api_errors(data: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFittedError):
        FOD().predict(data)
    with pytest.raises(fod.config.ConfigError, match="did you mean 'epochs'"):
        FOD(epoch=3)
    with pytest.raises(fod.errors.DataError, match="not found"):
        FOD(**OPTIONS).fit(tmp_path / "nowhere")


def test_api_fits_a_plain_folder_of_good_images(data: Path) -> None:
    model = FOD(device="cpu", progress=False, **{**OPTIONS, "epochs": 1})
    model.fit(data / "train" / "good")
    assert model.stats["num_train"] == 16


# ------------------------------------------------------------------------------- CLI


def test_cli_train_leaves_model_and_no_state(cli_model: Path) -> None:
    assert cli_model.is_file()
    assert not cli_model.with_name("widget.state.pt").exists()


def test_cli_test_json_and_report(
    cli_model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out_json = tmp_path / "r.json"
    report = tmp_path / "rep"
    rc = main(["test", str(cli_model), str(data), "--json", str(out_json), "--report", str(report)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| blob |" in printed and "| all |" in printed
    results = json.loads(out_json.read_text())
    check_results_shape(results, ["widget"])
    entry = results["categories"]["widget"]
    assert entry["per_defect"]["blob"]["count"] == 4
    assert len(list((report / "blob").glob("*.png"))) == 3
    assert len(list((report / "good").glob("*.png"))) == 3
    with (report / "scores.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    good = [float(r["score"]) for r in rows if r["defect_type"] == "good"]
    blob = [float(r["score"]) for r in rows if r["defect_type"] == "blob"]
    assert np.mean(blob) > np.mean(good)


def test_cli_predict(cli_model: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    assert main(["predict", str(cli_model), str(data / "test"), "--out", str(out), "--quiet"]) == 0
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    assert {Path(r["heatmap"]).name for r in rows} >= {"blob__000.png", "good__000.png"}
    assert all(Path(r["heatmap"]).is_file() for r in rows)
    single = data / "test" / "blob" / "001.png"
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
    cli_model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "m.pt"), *TRAIN])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "data folder not found" in err
    assert "Traceback" not in err

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert main(["test", str(bad), str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "cannot read this model file" in err

    image = data / "test" / "good" / "000.png"
    assert main(["predict", str(image), str(image)]) == 2
    assert "it is an image, not a model file" in capsys.readouterr().err

    assert main(["test", str(cli_model), str(data), "--image-size", "128"]) == 2
    err = capsys.readouterr().err
    assert "image_size" in err and "64" in err and "128" in err

    assert main(["train", str(data), "--out", str(tmp_path / "m.pt"), *TRAIN, "--heads", "3"]) == 2
    assert "divisible by heads" in capsys.readouterr().err
    assert main(["train", str(data), "--out", str(tmp_path / "m.pt"), "--device", "tpu"]) == 2
    assert "error: " in capsys.readouterr().err
    assert main(["nonsense"]) == 2
    assert main(["--help"]) == 0


def test_cli_state_needs_resume(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "m.pt"
    args = ["train", str(data), "--out", str(out), *TRAIN, "--epochs", "1"]

    def crash(self, path):  # an interruption after the last epoch, before the model is saved
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
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "bench_data"
    shutil.copytree(data, root / "alpha")
    shutil.copytree(data, root / "beta")
    out = tmp_path / "bench"
    summary = tmp_path / "summary.json"
    args = ["benchmark", str(root), "--out", str(out), *TRAIN, "--epochs", "1"]
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

    assert main([*args[:-1], "2"]) == 2  # other settings, same output folder
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
