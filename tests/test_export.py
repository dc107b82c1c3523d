"""ONNX export: onnxruntime on the exported file scores exactly like the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx
from conftest import TINY, tiny_config

import fod
from fod.api import FOD, NotFittedError
from fod.cli.main import main
from fod.config import FODConfig
from fod.data import load_batch
from fod.errors import CheckpointError
from fod.export import ExportError, check_onnx, export_onnx, read_metadata, run_onnx
from fod.model import FODTransformer, LevelSpec

S = TINY["image_size"]
BATCH = 4


@pytest.fixture(scope="module")
def model_file(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = FOD(tiny_config(epochs=1), device="cpu", progress=False).fit(generated)
    return model.save(tmp_path_factory.mktemp("model") / "board.pt")


@pytest.fixture(scope="module")
def onnx_file(model_file: Path) -> Path:
    return export_onnx(model_file, model_file.with_name("board.onnx"), batch_size=BATCH)


def test_onnx_scores_like_the_checkpoint(
    model_file: Path, onnx_file: Path, generated: Path
) -> None:
    # Real test images, not the random batch the graph was traced with.
    paths = sorted((generated / "test").rglob("*.png"))[: 2 * BATCH]
    assert len(paths) == 2 * BATCH
    images = load_batch(paths, S)
    model = FOD.load(model_file, device="cpu", progress=False)
    ref_maps, ref_scores = model.score(images)
    ref_maps, ref_scores = ref_maps.numpy(), ref_scores.numpy()
    chunks = [run_onnx(onnx_file, images[i : i + BATCH]) for i in range(0, len(paths), BATCH)]
    maps = np.concatenate([m for m, _ in chunks])
    scores = np.concatenate([s for _, s in chunks])
    assert maps.dtype == np.float32 and maps.shape == (2 * BATCH, S, S)
    assert scores.dtype == np.float32 and scores.shape == (2 * BATCH,)
    # standardised maps cross zero, so the tolerance is absolute, against their magnitude
    atol = 1e-5 * max(1.0, float(np.abs(ref_maps).max()))
    np.testing.assert_allclose(maps, ref_maps, rtol=1e-4, atol=atol)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=atol)
    # Small against what separates images, too: a few float32 roundings, no more.
    spread = float(ref_scores.max() - ref_scores.min())
    assert spread > 0 and np.abs(scores - ref_scores).max() <= 1e-3 * spread
    assert np.abs(maps - ref_maps).max() <= 1e-4 * float(np.abs(ref_maps).max())
    # Same decisions wherever the score is not within rounding of the threshold.
    clear = np.abs(ref_scores - model.threshold) > 1e-4
    assert np.array_equal((scores > model.threshold)[clear], (ref_scores > model.threshold)[clear])


def test_onnx_graph_signature_and_metadata(model_file: Path, onnx_file: Path) -> None:
    graph = onnx.load(str(onnx_file))
    onnx.checker.check_model(graph)

    def dims(value: onnx.ValueInfoProto) -> list[int]:
        return [d.dim_value for d in value.type.tensor_type.shape.dim]

    (inp,) = graph.graph.input
    assert inp.name == "images" and dims(inp) == [BATCH, 3, S, S]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    outs = {o.name: dims(o) for o in graph.graph.output}
    assert outs == {"maps": [BATCH, S, S], "scores": [BATCH]}

    props = {p.key: p.value for p in graph.metadata_props}
    model = FOD.load(model_file, device="cpu", progress=False)
    assert float(props["threshold"]) == model.threshold
    assert props["image_size"] == str(S) and props["fod_version"] == fod.__version__
    assert FODConfig.from_dict(json.loads(props["config"])) == model.config
    meta = read_metadata(onnx_file)
    assert meta["threshold"] == model.threshold and meta["image_size"] == S
    assert meta["batch_size"] == BATCH and meta["opset"] == 17
    assert meta["heatmap_range"] == list(model.heatmap_range)


# ------------------------------------------------------------------ other variants, dynamic batch


@pytest.fixture(scope="module")
def backbone():
    from fod.backbone import create_backbone

    return create_backbone(TINY["backbone"])


@pytest.mark.parametrize(
    "variant",
    [
        {"inter": False, "score": "div"},
        {"reference": "coreset", "coreset_size": 2, "output_projection": True},
        {"intra": False, "inter": False, "score": "rec", "entropy": False},
    ],
    ids=["intra", "coreset", "patch"],
)
def test_variants_export_with_a_dynamic_batch(
    variant: dict, backbone, generated: Path, tmp_path: Path
) -> None:
    """Untrained levels of other variants: the graph must still compute Detector's values."""
    torch.manual_seed(3)
    model = FOD(device="cpu", progress=False, threshold=1.0, **{**TINY, **variant})
    config = model.config
    with torch.no_grad():
        features = backbone(torch.rand(2, 3, S, S))
    levels = []
    for d, f in zip(config.d_model, features, strict=True):
        _, c, h, w = f.shape
        spec = LevelSpec(c, h, w, d, config.heads, config.num_layers, config.ffn_ratio)
        k = config.variant.reference_maps
        levels.append(FODTransformer(spec, config.variant, f[:1].repeat(k, 1, 1, 1)).eval())
    model.backbone, model.levels = backbone, levels
    path = export_onnx(model, tmp_path / "v.onnx", batch_size=2, dynamic_batch=True)
    assert read_metadata(path)["batch_size"] is None
    images = load_batch(sorted((generated / "test").rglob("*.png"))[:3], S)
    for batch in (images, images[:1]):  # traced with 2, run with 3 and 1
        result = check_onnx(path, model, batch)
        assert result.ok and result.batch_size == len(batch), result.summary()


def test_the_segmenter_context_path_exports(generated: Path, tmp_path: Path) -> None:
    """Pooling in ceil mode and bringing the pooled map back to the grid, traced and run at
    other batch sizes, give the checkpoint's maps."""
    config = tiny_config(epochs=1, segmenter_context=True)
    model = FOD(config, device="cpu", progress=False).fit(generated)
    assert model.segmenter is not None and model.segmenter.has_context
    path = export_onnx(model, tmp_path / "context.onnx", batch_size=2, dynamic_batch=True)
    images = load_batch(sorted((generated / "test").rglob("*.png"))[:3], S)
    for batch in (images, images[:1]):
        result = check_onnx(path, model, batch)
        assert result.ok and result.batch_size == len(batch), result.summary()


@pytest.mark.parametrize(
    "options",
    [{"nearest_pool": 3}, {"head_parts": ("residual", "nearest", "pooled", "wide")}],
    ids=["nearest_pool", "wide"],
)
def test_the_averaged_nearest_searches_export(generated: Path, tmp_path: Path, options) -> None:
    """The nearest part's local average, and the wide part's 7 x 7 one (average pooling
    without the padding, wider than the stride-16 grid here), export and score like the
    checkpoint at the traced and other batch sizes."""
    model = FOD(tiny_config(epochs=1, **options), device="cpu", progress=False).fit(generated)
    assert model.heads is not None
    assert [(h.pool, "wide" in h.parts) for h in model.heads] == [
        (options.get("nearest_pool", 1), "head_parts" in options)
    ] * 2
    path = export_onnx(model, tmp_path / "pooled.onnx", batch_size=2, dynamic_batch=True)
    images = load_batch(sorted((generated / "test").rglob("*.png"))[:3], S)
    for batch in (images, images[:1]):
        result = check_onnx(path, model, batch)
        assert result.ok and result.batch_size == len(batch), result.summary()


def test_several_image_weightings_export(model_file: Path, tmp_path: Path, generated: Path) -> None:
    """The band rule's K weightings (a loop over rows, traced) give the checkpoint's scores."""
    model = FOD.load(model_file, device="cpu", progress=False)
    g = torch.Generator().manual_seed(5)
    assert model.heads is not None
    for head in model.heads:
        head.image_weight = torch.rand(3, len(head.parts), generator=g)
    path = export_onnx(model, tmp_path / "band.onnx", batch_size=2, dynamic_batch=True)
    images = load_batch(sorted((generated / "test").rglob("*.png"))[:3], S)
    result = check_onnx(path, model, images)
    assert result.ok, result.summary()
    _, scores = run_onnx(path, images)
    single = FOD.load(model_file, device="cpu", progress=False).score(images)[1].numpy()
    assert not np.allclose(scores, single)  # the three weightings are what was exported


# ------------------------------------------------------------------ CLI and errors


def test_cli_export_check(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.onnx"
    rc = main(["export", str(model_file), "--out", str(out), "--batch-size", "2", "--check"])
    printed = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "max |difference| maps" in printed and ": OK" in printed
    assert "(2, 3, 64, 64)" in printed
    assert read_metadata(out)["batch_size"] == 2


def test_check_finds_a_model_that_scores_differently(model_file: Path, onnx_file: Path) -> None:
    model = FOD.load(model_file, device="cpu", progress=False)
    assert check_onnx(onnx_file, model).ok
    with torch.no_grad():
        model.levels[0].head.bias.add_(0.5)  # another model than the exported one
    result = check_onnx(onnx_file, model)
    assert not result.ok and "MISMATCH" in result.summary()
    with pytest.raises(ExportError, match="scores differently"):
        check_onnx(onnx_file, model, raise_on_mismatch=True)


def test_export_errors(
    model_file: Path, generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match="model file not found"):
        export_onnx(missing, tmp_path / "x.onnx")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="cannot read this model file"):
        export_onnx(bad, tmp_path / "x.onnx")
    with pytest.raises(NotFittedError):
        export_onnx(FOD(**TINY), tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="model file"):
        export_onnx(42, tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="batch size"):
        export_onnx(model_file, tmp_path / "x.onnx", batch_size=0)
    with pytest.raises(ExportError, match="opset 9"):
        export_onnx(model_file, tmp_path / "x.onnx", opset=9)
    not_onnx = tmp_path / "not.onnx"
    not_onnx.write_bytes(b"garbage")
    with pytest.raises(ExportError, match="cannot"):
        run_onnx(not_onnx, torch.zeros(1, 3, S, S))
    assert not (tmp_path / "x.onnx").exists()

    image = generated / "test" / "good" / "000.png"
    for model, why in [
        (missing, "model file not found"),
        (bad, "cannot read this model file"),
        (image, "it is an image, not a model file"),
    ]:
        assert main(["export", str(model), "--out", str(tmp_path / "x.onnx")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(model) in err and why in err
        assert "Traceback" not in err
    assert main(["export", str(model_file), "--batch-size", "0"]) == 2
    assert "batch size" in capsys.readouterr().err
