"""The anomaly segmenter: its targets, its net and its place in the heat map, against direct
computations; training that learns on generated features; model files that keep it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import bilinear_numpy, tiny_config

from fod.backbone import create_backbone
from fod.config import FODConfig, legacy_config, preset_config
from fod.data.anomalies import MAX_AREA
from fod.errors import CheckpointError, TrainingError
from fod.io import save_tensors
from fod.metrics.classification import auroc_from_groups
from fod.scoring import Detector
from fod.scoring.head import fit_head
from fod.scoring.segmenter import POOL, AnomalySegmenter, stack_levels
from fod.training import load_model_file, save_model_file, train
from fod.training.segmenter import (
    CONTEXT_MAX_AREA,
    MAX_ANOMALIES,
    MIN_ANOMALIES,
    anomaly_count,
    anomaly_features,
    finest_grid,
    token_targets,
    train_segmenter,
)


def bilinear_channels(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """:func:`conftest.bilinear_numpy` of each channel of a (C, H, W) array."""
    return np.stack([bilinear_numpy(c, out_h, out_w) for c in x])


def conv_numpy(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(C, H, W) convolution with zero padding keeping the size, one output pixel at a time."""
    out_c, in_c, k, _ = weight.shape
    pad = k // 2
    _, h, w = x.shape
    xp = np.zeros((in_c, h + 2 * pad, w + 2 * pad))
    xp[:, pad : pad + h, pad : pad + w] = x
    out = np.zeros((out_c, h, w))
    for o in range(out_c):
        for i in range(h):
            for j in range(w):
                out[o, i, j] = (weight[o] * xp[:, i : i + k, j : j + k]).sum() + bias[o]
    return out


def test_token_targets_are_the_share_of_each_cell() -> None:
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((3, 32, 32)) > 0.7)
    targets = token_targets(masks, (8, 4)).numpy()
    expected = masks.numpy().reshape(3, 8, 4, 4, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(targets, expected, atol=1e-6)


def test_stack_levels_brings_coarse_levels_to_the_finest_grid() -> None:
    gen = torch.Generator().manual_seed(0)
    fine, coarse = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 5, 4, 4, generator=gen)
    assert finest_grid([fine, coarse]) == (8, 8) == finest_grid([coarse, fine])
    stacked = stack_levels([fine, coarse], (8, 8))
    assert stacked.shape == (2, 8, 8, 8)
    assert torch.equal(stacked[:, :3], fine)
    for b in range(2):
        np.testing.assert_allclose(
            stacked[b, 3:].numpy(), bilinear_channels(coarse[b].double().numpy(), 8, 8), atol=1e-5
        )


def avg_pool_numpy(x: np.ndarray, k: int) -> np.ndarray:
    """(C, H, W) mean over k x k windows from the top left; a window cut by the edge averages
    the tokens it holds (ceil mode)."""
    c, h, w = x.shape
    rows, cols = -(-h // k), -(-w // k)
    out = np.zeros((c, rows, cols))
    for i in range(rows):
        for j in range(cols):
            out[:, i, j] = x[:, i * k : (i + 1) * k, j * k : (j + 1) * k].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("context", [False, True])
def test_segmenter_output_against_a_direct_computation(context: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    seg = AnomalySegmenter([3, 2], 6, 6, context=context)
    with torch.no_grad():
        for p in seg.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        seg.input_mean.copy_(torch.randn(1, 5, 1, 1, generator=gen))
        seg.input_scale.copy_(torch.rand(1, 5, 1, 1, generator=gen) + 0.5)
        seg.scale.fill_(2.5)
    feats = [torch.randn(1, 3, 6, 6, generator=gen), torch.randn(1, 2, 3, 3, generator=gen)]
    x = np.concatenate(
        [feats[0][0].double().numpy(), bilinear_channels(feats[1][0].double().numpy(), 6, 6)]
    )
    x = (x - seg.input_mean[0].double().numpy()) * seg.input_scale[0].double().numpy()

    def conv(x: np.ndarray, layer: torch.nn.Module) -> np.ndarray:
        assert isinstance(layer, torch.nn.Conv2d)
        return conv_numpy(x, layer.weight.detach().double().numpy(), layer.bias.detach().numpy())

    hidden = np.maximum(conv(np.maximum(conv(x, seg.net[0]), 0.0), seg.net[2]), 0.0)
    if context:
        assert seg.context is not None
        wide = np.maximum(conv(avg_pool_numpy(hidden, POOL), seg.context[0]), 0.0)
        assert wide.shape[1:] == (2, 2)  # 6 tokens in windows of 4: one cut by the edge
        hidden = np.concatenate([hidden, bilinear_channels(wide, 6, 6)])
    else:
        assert seg.context is None
    logit = conv(hidden, seg.net[4])[0]
    center = float(np.median(logit))  # half the tokens fall under the clamp
    seg.center.fill_(center)
    expected = np.maximum((logit - center) / 2.5, 0.0)
    assert (expected == 0).any() and (expected > 0).any()
    with torch.no_grad():
        got = seg(feats)[0].double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="takes 2 feature levels"):
        seg(feats[:1])


def _generated_features(
    n: int, anomalous: bool, seed: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Noise features on an 8 x 8 grid (4 channels) and a 4 x 4 grid (2 channels); in an
    anomalous one a random square of the fine grid has channel 0 raised by 2."""
    gen = torch.Generator().manual_seed(seed)
    fine, coarse = torch.randn(n, 4, 8, 8, generator=gen), torch.randn(n, 2, 4, 4, generator=gen)
    targets = torch.zeros(n, 8, 8)
    if anomalous:
        for i in range(n):
            y, x = torch.randint(0, 6, (2,), generator=gen).tolist()
            targets[i, y : y + 3, x : x + 3] = 1.0
        fine[:, 0] += 2.0 * targets
    return [fine, coarse], targets


def test_training_learns_generated_anomalies_and_standardises_on_held_out() -> None:
    good, _ = _generated_features(48, False, 0)
    anomalous, targets = _generated_features(96, True, 1)
    holdout, _ = _generated_features(16, False, 2)
    seg, report = train_segmenter(good, anomalous, targets, holdout, seed=0, epochs=8)
    assert report["epochs"] == 8 and report["loss"][-1] < report["loss"][0]
    with torch.no_grad():
        held = ((seg.logits(holdout) - seg.center) / seg.scale).double()
        assert torch.equal(seg(holdout), held.float().clamp_min(0))
        assert abs(float(held.mean())) < 1e-5 and abs(float(held.std()) - 1.0) < 1e-4
        test, test_targets = _generated_features(32, True, 3)
        out = seg(test)
    inside, outside = out[test_targets > 0].numpy(), out[test_targets == 0].numpy()
    assert auroc_from_groups(inside, outside) > 0.95
    again, _ = train_segmenter(good, anomalous, targets, holdout, seed=0, epochs=8)
    for a, b in zip(seg.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_nan_feature_stops_training_with_a_clear_error() -> None:
    good, _ = _generated_features(8, False, 0)
    anomalous, targets = _generated_features(8, True, 1)
    anomalous[0][0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingError, match="segmenter's loss became NaN"):
        train_segmenter(good, anomalous, targets, good, epochs=1)


def test_anomaly_features_are_seeded_and_their_targets_cover_each_anomaly(
    generated: Path,
) -> None:
    from fod.data import load_category

    samples = load_category(generated).train[:5]
    backbone = create_backbone("efficientnet_lite0")
    feats, targets = anomaly_features(backbone, samples, 64, 12, (8, 8), seed=3)
    assert [tuple(f.shape) for f in feats] == [(12, 40, 8, 8), (12, 112, 4, 4)]
    assert targets.shape == (12, 8, 8) and float(targets.min()) >= 0 and float(targets.max()) <= 1
    assert bool((targets.flatten(1).sum(1) > 0).all())
    again, targets2 = anomaly_features(backbone, samples, 64, 12, (8, 8), seed=3)
    assert torch.equal(targets, targets2) and torch.equal(feats[0], again[0])
    _, other = anomaly_features(backbone, samples, 64, 12, (8, 8), seed=4)
    assert not torch.equal(targets, other)
    assert anomaly_count(10) == MIN_ANOMALIES and anomaly_count(10_000) == MAX_ANOMALIES
    assert anomaly_count(300) == 600


def test_anomaly_features_on_content_mark_only_cells_with_texture(tmp_path: Path) -> None:
    import torch.nn.functional as F
    from PIL import Image

    from fod.data import load_batch
    from fod.data.anomalies import content_mask
    from fod.data.layouts import Sample

    gen = np.random.default_rng(0)
    samples = []
    for i in range(3):  # a textured square (the product) at a different place on plain grey
        image = np.full((64, 64, 3), 128, dtype=np.uint8)
        y, x = 4 + 10 * i, 36 - 12 * i
        image[y : y + 24, x : x + 24] = gen.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        samples.append(Sample(tmp_path / f"{i}.png", 0, "good"))
    images = load_batch([s.image for s in samples], 64).numpy()
    textured = [  # the 8 x 8 cells that hold some texture
        F.avg_pool2d(torch.from_numpy(content_mask(im)).float()[None, None], 8)[0, 0] > 0
        for im in images
    ]
    backbone = create_backbone("efficientnet_lite0")
    _, targets = anomaly_features(backbone, samples, 64, 9, (8, 8), 3, placement="content")
    _, anywhere = anomaly_features(backbone, samples, 64, 9, (8, 8), 3, placement="anywhere")
    for j in range(9):
        cells = textured[j % 3]
        assert bool(targets[j].sum() > 0) and not bool((targets[j][~cells] > 0).any())
    assert any(bool((anywhere[j][~textured[j % 3]] > 0).any()) for j in range(9))


def _tiny_model() -> tuple:
    config = tiny_config(epochs=1, batch_size=2, head_parts=("nearest",))
    backbone = create_backbone(config.backbone)
    with torch.no_grad():
        feats = backbone(torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    models = train(config, [f[:4] for f in feats], progress=False).models
    heads = [
        fit_head(config.head_parts, m, f[:4], f[4:], config.bank_size, config.seed)
        for m, f in zip(models, feats, strict=True)
    ]
    gen = torch.Generator().manual_seed(5)
    seg = AnomalySegmenter(backbone.channels, 8, 8)
    with torch.no_grad():
        for p in seg.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        seg.center.fill_(0.2)
        seg.scale.fill_(1.5)
    return config, backbone, models, heads, seg.eval()


def test_detector_adds_the_segmenter_to_the_heat_map_only() -> None:
    _, backbone, models, heads, seg = _tiny_model()
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    maps, scores = Detector(backbone, models, 64, heads=heads)(images)
    maps_s, scores_s = Detector(backbone, models, 64, heads=heads, segmenter=seg)(images)
    assert torch.equal(scores, scores_s)
    with torch.no_grad():
        logits = seg(backbone(images)).double().numpy()
    added = bilinear_channels(logits, 64, 64)
    np.testing.assert_allclose((maps_s - maps).double().numpy(), added, atol=1e-4)
    wrong = AnomalySegmenter([3, 4], 8, 8)
    with pytest.raises(ValueError, match="segmenter takes levels of"):
        Detector(backbone, models, 64, heads=heads, segmenter=wrong)


def test_model_file_keeps_the_segmenter_and_refuses_a_broken_one(tmp_path: Path) -> None:
    config, backbone, models, heads, seg = _tiny_model()
    path = tmp_path / "m.pt"
    kwargs = {"threshold": 1.0, "heads": heads}
    with pytest.raises(ValueError, match="segmenter given: False"):
        save_model_file(path, config, backbone, models, **kwargs)
    save_model_file(path, config, backbone, models, segmenter=seg, **kwargs)
    _, backbone2, levels, meta = load_model_file(path)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    a = Detector(backbone, models, 64, heads=heads, segmenter=seg)(images)
    b = Detector(backbone2, levels, 64, heads=meta["heads"], segmenter=meta["segmenter"])(images)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    data = torch.load(path, weights_only=True)
    data["segmenter"]["net.0.weight"] = torch.zeros(3, 3)
    save_tensors(tmp_path / "broken.pt", data)
    with pytest.raises(CheckpointError, match="anomaly segmenter does not match"):
        load_model_file(tmp_path / "broken.pt")
    data = torch.load(path, weights_only=True)
    data["segmenter"]["center"] = torch.tensor(float("nan"))
    save_tensors(tmp_path / "nan.pt", data)
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_model_file(tmp_path / "nan.pt")
    data = torch.load(path, weights_only=True)
    data["segmenter"] = None
    save_tensors(tmp_path / "none.pt", data)
    with pytest.raises(CheckpointError, match="anomaly segmenter"):
        load_model_file(tmp_path / "none.pt")


def test_config_switch_paper_preset_and_older_files() -> None:
    assert FODConfig().segmenter is True and FODConfig().segmenter_context is False
    assert FODConfig(segmenter_context=True).segmenter_context is True
    assert preset_config("paper").segmenter is False
    assert preset_config("paper").segmenter_context is False
    assert FODConfig(head="paper", head_parts=("paper",), holdout=0.0).segmenter is False
    assert FODConfig(segmenter=False).segmenter is False
    assert FODConfig(segmenter=False, segmenter_context=True).segmenter_context is False
    with pytest.raises(ValueError, match="segmenter must be true or false"):
        FODConfig(segmenter="yes")
    with pytest.raises(ValueError, match="segmenter_context must be true or false"):
        FODConfig(segmenter_context=1)
    old = {k: v for k, v in FODConfig().to_dict().items() if k != "segmenter"}
    assert FODConfig.from_dict(legacy_config(old)).segmenter is False
    # a model from before the context path: its segmenter is the local one
    with_path = FODConfig(segmenter_context=True).to_dict()
    older = {k: v for k, v in with_path.items() if k != "segmenter_context"}
    restored = FODConfig.from_dict(legacy_config(older))
    assert restored.segmenter is True and restored.segmenter_context is False


def test_a_model_file_from_before_the_context_path_loads_and_a_mismatch_is_refused(
    tmp_path: Path,
) -> None:
    config, backbone, models, heads, _ = _tiny_model()
    local_config = config.replace(segmenter_context=False)
    local = AnomalySegmenter(backbone.channels, 8, 8)
    assert not local.has_context  # the default
    with torch.no_grad():
        for p in local.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(6)) * 0.1)
    path = tmp_path / "local.pt"
    save_model_file(
        path, local_config, backbone, models, threshold=1.0, heads=heads, segmenter=local
    )
    data = torch.load(path, weights_only=True)
    del data["segmenter"]["context"]  # as files written before the context path were
    data["config"].pop("segmenter_context")
    save_tensors(tmp_path / "older.pt", data)
    stored, _, _, meta = load_model_file(tmp_path / "older.pt")
    loaded = meta["segmenter"]
    assert stored.segmenter_context is False and not loaded.has_context
    feats = backbone(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(7)))
    with torch.no_grad():
        assert torch.equal(loaded(feats), local(feats))
    data["config"]["segmenter_context"] = True  # says context, holds the local net
    save_tensors(tmp_path / "mismatch.pt", data)
    with pytest.raises(CheckpointError, match="lacks the context path"):
        load_model_file(tmp_path / "mismatch.pt")


def test_cli_trains_it_by_default_and_leaves_it_out_on_request(
    generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from conftest import tiny_args

    from fod.api import FOD
    from fod.cli.main import main

    on, off = tmp_path / "on.pt", tmp_path / "off.pt"
    assert main(["train", str(generated), "--out", str(on), *tiny_args(epochs=1)]) == 0
    printed = capsys.readouterr().out
    model = FOD.load(on, progress=False)
    assert model.config.segmenter and model.segmenter is not None
    report = model.stats["segmenter"]
    assert report["anomalies"] == anomaly_count(model.stats["num_train"])
    assert f"anomaly segmenter: {report['anomalies']} synthetic anomalies" in printed
    assert not model.segmenter.has_context and report["max_area"] == MAX_AREA
    assert report["placement"] == model.config.anomaly_placement == "content"
    args = ["train", str(generated), "--out", str(off), *tiny_args(epochs=1), "--no-segmenter"]
    assert main(args) == 0
    plain = FOD.load(off, progress=False)
    assert not plain.config.segmenter and plain.segmenter is None
    assert "segmenter" not in plain.stats and "anomaly segmenter" not in capsys.readouterr().out
    # the segmenter changes the heat maps, never the image scores (on defective test images)
    from fod.data import load_batch, load_category

    defective = [s.image for s in load_category(generated).test if s.label == 1][:4]
    images = load_batch(defective, 64)
    maps_on, scores_on = model.score(images)
    maps_off, scores_off = plain.score(images)
    assert torch.equal(scores_on, scores_off) and not torch.equal(maps_on, maps_off)
    wide = tmp_path / "context.pt"
    args = [
        *("train", str(generated), "--out", str(wide), *tiny_args(epochs=1)),
        "--segmenter-context",
    ]
    assert main(args) == 0
    context = FOD.load(wide, progress=False)
    assert context.config.segmenter and context.config.segmenter_context
    assert context.segmenter is not None and context.segmenter.has_context
    assert context.stats["segmenter"]["max_area"] == CONTEXT_MAX_AREA
    maps_wide, scores_wide = context.score(images)
    assert torch.equal(scores_wide, scores_on) and not torch.equal(maps_wide, maps_on)
