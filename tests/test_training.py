"""Config, feature extraction and cache, and the training loop (determinism, resume, refusal)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from fod.backbone import create_backbone
from fod.config import ConfigError, FODConfig, make_config
from fod.data import Sample
from fod.errors import CheckpointError, DataError
from fod.io import load_tensors
from fod.model import Variant
from fod.training import FeatureCache, extract_features, feature_key, read_state, train
from fod.training import features as features_module
from fod.training import trainer as trainer_module


def random_features(n: int = 5, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 8, 4, 4, generator=g), torch.randn(n, 12, 2, 2, generator=g)]


def weights(result) -> list[dict[str, torch.Tensor]]:
    return [m.state_dict() for m in result.models]


def assert_same_weights(a, b) -> None:
    for sa, sb in zip(weights(a), weights(b), strict=True):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def strip_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


# ------------------------------------------------------------------------------- config


def test_paper_preset_follows_the_paper() -> None:
    c = FODConfig.paper()
    assert c.head == "paper" and c.holdout == 0.0
    assert c.backbone == "efficientnet_lite2" and c.image_size == 256
    assert c.d_model == (256, 512) and c.heads == 8 and c.num_layers == 3 and c.ffn_ratio == 4
    assert c.epochs == 100 and c.batch_size == 1 and c.lr == 1e-4
    assert c.lambda1 == c.lambda2 == 0.5 and c.seed == 3407 and c.variant == Variant()
    assert c.segmenter is False and c.validation == "none"


def test_config_round_trip_is_json() -> None:
    c = tiny_config(
        layers=[3, 2], variant=Variant(reference="coreset", coreset_size=2), weights=None
    )
    data = json.loads(json.dumps(c.to_dict()))
    assert FODConfig.from_dict(data) == c
    assert c.layers == (2, 3)
    assert set(c.model_signature()) == {
        "backbone",
        "layers",
        "image_size",
        "d_model",
        "heads",
        "num_layers",
        "ffn_ratio",
        "variant",
        "head",
        "head_parts",
        "nearest_pool",
        "segmenter",
        "segmenter_context",
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"d_model": (30, 32)}, "divisible by 4"),
        ({"heads": 3}, "divisible by heads"),
        ({"image_size": 16}, "image_size"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"lambda1": float("nan")}, "lambda1"),
        ({"layers": (2, 3, 4)}, "one d_model per layer"),
        ({"d_model": "64"}, "one width per feature level"),
        ({"batch_size": 1.5}, "batch_size"),
    ],
)
def test_config_validation_messages(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(**changes)


def test_config_unknown_key_and_levels() -> None:
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        FODConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="3 feature levels"):
        tiny_config().check_levels(3)
    tiny_config().check_levels(2)


def test_make_config_with_variant_switches() -> None:
    c = make_config(tiny_config(), intra=False, epochs=4)
    assert c.variant == Variant(intra=False) and c.epochs == 4
    with pytest.raises(ConfigError, match="needs a correlation branch"):
        make_config(None, intra=False, inter=False)
    with pytest.raises(ConfigError, match="unknown option"):
        make_config(None, layer=3)
    diff = tiny_config().differences(tiny_config(image_size=128))
    assert diff == {"image_size": (64, 128)}


# ------------------------------------------------------------------------------- training


def test_same_seed_same_weights_and_history() -> None:
    feats = random_features()
    a = train(tiny_config(), feats, progress=False)
    b = train(tiny_config(), feats, progress=False)
    assert_same_weights(a, b)
    assert strip_seconds(a.history) == strip_seconds(b.history)
    c = train(tiny_config(seed=12), feats, progress=False)
    assert not torch.equal(weights(a)[0]["embed.weight"], weights(c)[0]["embed.weight"])


def test_history_content() -> None:
    result = train(tiny_config(epochs=3), random_features(), progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for h in result.history:
        for key in ("loss1", "loss2", "rec", "div_intra", "ent_intra", "div_inter", "seconds"):
            assert np.isfinite(h[key]), key
        assert len(h["levels"]) == 2
        assert h["rec"] == pytest.approx((h["levels"][0]["rec"] + h["levels"][1]["rec"]) / 2)
    assert all(not m.training for m in result.models)


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    feats = random_features(n=5)
    full = train(tiny_config(epochs=2), feats, progress=False)
    state = tmp_path / "run.state.pt"
    first = train(tiny_config(epochs=1), feats, state_path=state, progress=False)
    assert read_state(state)["epoch"] == 1
    resumed = train(tiny_config(epochs=2), feats, state_path=state, resume=True, progress=False)
    assert_same_weights(full, resumed)
    assert strip_seconds(resumed.history) == strip_seconds(full.history)
    assert strip_seconds(first.history) == strip_seconds(full.history[:1])
    assert read_state(state)["epoch"] == 2
    again = train(tiny_config(epochs=2), feats, state_path=state, resume=True, progress=False)
    assert_same_weights(full, again)  # nothing left to do: the state's models come back
    with pytest.raises(CheckpointError, match="2 finished epochs, more than the 1"):
        train(tiny_config(epochs=1), feats, state_path=state, resume=True, progress=False)


def test_interrupted_run_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C in the middle of epoch 2 leaves the state of epoch 1; resuming finishes the run
    with exactly the weights of an uninterrupted one."""
    feats = random_features(n=6)
    config = tiny_config(epochs=3, batch_size=2)
    full = train(config, feats, progress=False)
    state = tmp_path / "s.pt"
    real = trainer_module.fod_objective
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2 * 3 + 2:  # 3 batches x 2 levels in epoch 1, then part of epoch 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "fod_objective", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(config, feats, state_path=state, progress=False)
    monkeypatch.setattr(trainer_module, "fod_objective", real)
    assert read_state(state)["epoch"] == 1
    resumed = train(config, feats, state_path=state, resume=True, progress=False)
    assert_same_weights(full, resumed)


def test_state_is_weights_only_and_plain(tmp_path: Path) -> None:
    state = tmp_path / "s.pt"
    train(tiny_config(epochs=1), random_features(), state_path=state, progress=False)
    data = torch.load(state, map_location="cpu", weights_only=True)
    assert data["format"] == "fod-train-state" and data["epoch"] == 1
    assert FODConfig.from_dict(data["config"]) == tiny_config(epochs=1)
    assert load_tensors(state)["num_images"] == 5


def test_resume_refuses_other_config_or_data(tmp_path: Path) -> None:
    state = tmp_path / "s.pt"
    feats = random_features()
    train(tiny_config(epochs=1), feats, state_path=state, progress=False)
    with pytest.raises(CheckpointError) as err:
        train(tiny_config(d_model=(64, 32)), feats, state_path=state, resume=True, progress=False)
    assert str(state) in str(err.value) and "d_model" in str(err.value)
    with pytest.raises(CheckpointError, match="lr"):
        train(tiny_config(lr=5e-4), feats, state_path=state, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="training images"):
        train(tiny_config(), random_features(seed=5), state_path=state, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="not found"):
        train(tiny_config(), feats, state_path=tmp_path / "none.pt", resume=True, progress=False)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        train(tiny_config(), feats, state_path=tmp_path / "bad.pt", resume=True, progress=False)


def test_variants_train() -> None:
    feats = random_features(n=4)
    for variant in (
        Variant.patch_only(),
        Variant(intra=False),
        Variant(inter=False),
        Variant(reference="coreset", coreset_size=2),
        Variant(entropy=False, output_projection=True),
    ):
        result = train(tiny_config(epochs=1, variant=variant), feats, progress=False)
        assert len(result.models) == 2 and result.models[0].variant == variant
    with pytest.raises(DataError, match="coreset"):
        train(
            tiny_config(variant=Variant(reference="coreset", coreset_size=9)), feats, progress=False
        )


def test_train_checks_levels() -> None:
    with pytest.raises(ValueError, match="levels"):
        train(tiny_config(d_model=(32,)), random_features(), progress=False)


# ------------------------------------------------------------------------------- features


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("efficientnet_lite0")


@pytest.fixture()
def images(tmp_path: Path) -> list[Sample]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path, 0, "good"))
    return samples


def test_extract_features_shapes_and_values(backbone, images: list[Sample]) -> None:
    feats = extract_features(backbone, images, 64, batch_size=2, progress=False)
    assert [tuple(f.shape) for f in feats] == [(3, 40, 8, 8), (3, 112, 4, 4)]
    assert all(f.dtype == torch.float32 and f.device.type == "cpu" for f in feats)
    from fod.data import load_batch

    with torch.no_grad():
        direct = backbone(load_batch([s.image for s in images], 64))
    for a, b in zip(feats, direct, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(DataError):
        extract_features(backbone, [], 64, progress=False)


def test_feature_cache_reuses_and_invalidates(
    backbone, images: list[Sample], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    first = cache.features(backbone, images, 64, progress=False)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the backbone ran although the features were cached")

    monkeypatch.setattr(features_module, "extract_features", fail)
    again = cache.features(backbone, images, 64, progress=False)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)

    key = feature_key(backbone, images, 64)
    assert feature_key(backbone, images, 32) != key
    assert feature_key(backbone, images[:2], 64) != key
    st = images[0].image.stat()
    os.utime(images[0].image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert feature_key(backbone, images, 64) != key

    cache.path(key).write_bytes(b"not a tensor file")  # damaged entry: ignored, recomputed
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.load(key) is None
