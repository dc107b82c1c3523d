"""Model files: exact round trip, weights-only loading, and a clear error for every bad file."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from fod.backbone import create_backbone
from fod.errors import CheckpointError
from fod.io import save_tensors, stamp_problem
from fod.scoring import Detector
from fod.training import load_model_file, read_model_file, save_model_file, train

CONFIG = tiny_config(epochs=1, batch_size=2, head="paper", holdout=0.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    backbone = create_backbone(CONFIG.backbone)
    with torch.no_grad():
        feats = backbone(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    result = train(CONFIG, feats, progress=False)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    stats = {"pixel_p1": 0.5, "pixel_p99": 2.5, "num_train": 4}
    save_model_file(
        path,
        CONFIG,
        backbone,
        result.models,
        threshold=1.25,
        stats=stats,
        history=result.history,
    )
    return backbone, result, path


def edited(tmp_path: Path, source: Path, change) -> Path:
    data = torch.load(source, weights_only=True)
    change(data)
    out = tmp_path / "edited.pt"
    save_tensors(out, data)
    return out


def test_round_trip_gives_identical_scores(trained: tuple) -> None:
    backbone, result, path = trained
    config, backbone2, levels, meta = load_model_file(path)
    assert config == CONFIG
    assert meta["threshold"] == 1.25 and meta["stats"]["pixel_p99"] == 2.5
    assert meta["history"][0]["epoch"] == 1 and meta["fod_version"]
    assert meta["backbone"] == backbone.describe()
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    maps_a, scores_a = Detector(backbone, result.models, 64)(images)
    maps_b, scores_b = Detector(backbone2, levels, 64)(images)
    assert torch.equal(maps_a, maps_b) and torch.equal(scores_a, scores_b)
    for a, b in zip(result.models, levels, strict=True):
        assert torch.equal(a.reference, b.reference)


def test_file_is_plain_data_for_weights_only_loading(trained: tuple) -> None:
    _, _, path = trained
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert data["format"] == "fod-model" and data["version"] == 1
    assert set(data) >= {"config", "backbone", "levels", "threshold", "stats", "history"}
    assert "reference" in data["levels"][0]["state_dict"]
    with pytest.raises(pickle.UnpicklingError):  # a pickled object is refused by the same loader
        evil = path.parent / "evil.pt"
        torch.save({"x": Path("p")}, evil)
        torch.load(evil, weights_only=True)


def test_requested_config_must_match(trained: tuple) -> None:
    _, _, path = trained
    with pytest.raises(CheckpointError) as err:
        load_model_file(path, requested={"image_size": 128})
    text = str(err.value)
    assert str(path) in text and "image_size" in text and "64" in text and "128" in text
    with pytest.raises(CheckpointError, match="d_model"):
        load_model_file(path, requested=CONFIG.replace(d_model=(64, 64)))
    load_model_file(path, requested={"image_size": 64, "epochs": 1}, build_backbone=False)


def test_missing_and_corrupt_files(trained: tuple, tmp_path: Path) -> None:
    _, _, path = trained
    with pytest.raises(CheckpointError, match="not found"):
        load_model_file(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_model_file(tmp_path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError) as err:
        load_model_file(truncated)
    assert str(truncated) in str(err.value) and "damaged" in str(err.value)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model_file(empty)
    pickled = tmp_path / "pickled.pt"
    torch.save({"x": Path("p")}, pickled)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_model_file(pickled)
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a fod model file"):
        load_model_file(plain)


def test_other_version_and_training_state(trained: tuple, tmp_path: Path) -> None:
    _, _, path = trained
    newer = edited(tmp_path, path, lambda d: d.update(version=2))
    with pytest.raises(CheckpointError, match=r"format version 2.*Upgrade fod"):
        read_model_file(newer)
    state = edited(tmp_path, path, lambda d: d.update(format="fod-train-state"))
    with pytest.raises(CheckpointError, match="training state"):
        read_model_file(state)


def test_weights_that_do_not_match_the_config(trained: tuple, tmp_path: Path) -> None:
    _, _, path = trained

    def wider(d: dict) -> None:
        d["config"]["d_model"] = [64, 64]

    with pytest.raises(CheckpointError, match="do not match the stored config"):
        load_model_file(edited(tmp_path, path, wider))

    def bigger_images(d: dict) -> None:
        d["config"]["image_size"] = 128

    with pytest.raises(CheckpointError, match="token grid"):
        load_model_file(edited(tmp_path, path, bigger_images))

    def broken_tensor(d: dict) -> None:
        d["levels"][0]["state_dict"]["embed.weight"] = torch.zeros(3, 3)

    with pytest.raises(CheckpointError, match="do not match"):
        load_model_file(edited(tmp_path, path, broken_tensor))

    def one_level(d: dict) -> None:
        d["levels"] = d["levels"][:1]

    with pytest.raises(CheckpointError, match=r"1 level\(s\)"):
        load_model_file(edited(tmp_path, path, one_level))


def test_stamp_problem_names_what_differs() -> None:
    assert stamp_problem({"format": "f", "version": 2, "x": 1}, "f", 2) is None
    assert stamp_problem({"format": "f", "version": 1}, "f", 2) == "version"
    assert stamp_problem({"format": "g", "version": 2}, "f", 2) == "format"
    assert stamp_problem([("format", "f")], "f", 2) == "format"
