"""ONNX export of the whole scorer: ``images`` -> ``maps`` and ``scores`` in one graph.

The graph is :class:`~fod.scoring.Detector`'s forward, traced with the TorchScript-based
exporter: backbone normalisation and features, one FOD transformer per level, token scores,
bilinear upsampling, the level average, the Gaussian blur and the maximum. Nothing is left to
the caller but resizing the image to S x S and scaling it to [0, 1]:

- input ``images``: float32 (B, 3, S, S), RGB in [0, 1] (B fixed at export time, or any
  with ``dynamic_batch=True``);
- outputs ``maps``: float32 (B, S, S) unblurred heat maps, ``scores``: float32 (B,).

The fused correlation (a custom autograd Function walking row blocks) does not survive
tracing: the exporter inlines its forward but drops its in-place block writes, and the graph
then returns zeros. The export therefore runs it as ordinary tensor ops in one block
(:func:`fod.model.correlation.plain_correlation`), which computes the same values.

The model's decision threshold, image size, heat-map colour range, config and the fod version
are stored as ONNX metadata (``metadata_props``; see :func:`read_metadata`).

>>> path = export_onnx("bottle.pt", "bottle.onnx", batch_size=1)
>>> check_onnx(path, "bottle.pt").maps_max_diff      # onnxruntime vs PyTorch, random batch
"""

from __future__ import annotations

import copy
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fod._version import __version__
from fod.errors import FODError

INPUT_NAME = "images"
OUTPUT_NAMES = ("maps", "scores")
DEFAULT_OPSET = 17
#: Opsets the TorchScript-based exporter handles for this graph (scaled dot-product attention
#: needs 14; LayerNormalization is a single node from 17 on).
OPSETS = range(14, 21)
#: ``check_onnx`` passes when every difference is within ATOL + RTOL * (largest |value|).
RTOL = 1e-4
ATOL = 1e-5
_TRACE_SEED = 20230802


class ExportError(FODError, RuntimeError):
    """An export that cannot be made or checked (missing package, bad option, mismatch)."""


def _import(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs the '{name}' package, which is not installed: "
            "pip install 'fod[export]' (onnx and onnxruntime)."
        ) from exc


def _as_model(model_or_path: Any) -> Any:
    """A fitted :class:`~fod.api.FOD` from a FOD or a model file (CheckpointError if bad)."""
    from fod.api import FOD

    if isinstance(model_or_path, FOD):
        model_or_path._require_fitted()
        return model_or_path
    if isinstance(model_or_path, (str, Path)):
        return FOD.load(model_or_path, device="cpu", progress=False)
    raise TypeError(
        f"expected a fod.FOD model or the path of a model file, got {type(model_or_path).__name__}"
    )


def _cpu_detector(model: Any) -> torch.nn.Module:
    """The model's Detector on the CPU, copied if it lives elsewhere (the model stays put)."""
    detector = model.detector
    tensors = [*detector.parameters(), *detector.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        detector = copy.deepcopy(detector).cpu()
    return detector


def _batch_text(batch_size: int, dynamic_batch: bool) -> str:
    return "B" if dynamic_batch else str(batch_size)


def _check_options(batch_size: Any, opset: Any) -> tuple[int, int]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"batch size must be a positive integer, got {batch_size!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise ExportError(
            f"ONNX opset {opset!r} is not supported; use {OPSETS.start} to {OPSETS.stop - 1} "
            f"(default {DEFAULT_OPSET})"
        )
    return batch_size, opset


def metadata(
    model: Any, batch_size: int, opset: int, dynamic_batch: bool = False
) -> dict[str, str]:
    """The ``metadata_props`` written into the ONNX file (all values are strings;
    ``batch_size`` is "dynamic" for a graph that takes any batch)."""
    threshold = math.nan if model.threshold is None else float(model.threshold)
    size = model.config.image_size
    lo, hi = model.heatmap_range
    b = _batch_text(batch_size, dynamic_batch)
    return {
        "threshold": repr(threshold),
        "image_size": str(size),
        "fod_version": __version__,
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
        "batch_size": "dynamic" if dynamic_batch else str(batch_size),
        "opset": str(opset),
        "heatmap_range": json.dumps([lo, hi]),
        "input": f"{INPUT_NAME}: float32 ({b}, 3, {size}, {size}) RGB in [0, 1]",
        "outputs": (
            f"maps: float32 ({b}, {size}, {size}) unblurred heat maps; scores: float32 ({b},) "
            "image scores (the blurred map's maximum; with the calibrated head, the mean of the "
            "blurred maxima of the image score's weightings); anomalous when score > threshold"
        ),
    }


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported file, parsed: ``threshold`` (float), ``image_size``,
    ``opset`` (int), ``batch_size`` (int, None if dynamic), ``config`` (dict),
    ``heatmap_range`` (list) and the rest as strings."""
    onnx = _import("onnx")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{path}: cannot read this ONNX file ({exc})") from exc
    raw = {p.key: p.value for p in graph.metadata_props}
    out: dict[str, Any] = dict(raw)
    for key in ("image_size", "batch_size", "opset"):
        if key in raw:
            out[key] = int(raw[key]) if raw[key].isdigit() else None
    if "threshold" in raw:
        out["threshold"] = float(raw["threshold"])
    for key in ("config", "heatmap_range"):
        if key in raw:
            out[key] = json.loads(raw[key])
    return out


def export_onnx(
    model_or_path: Any,
    out: str | Path,
    batch_size: int = 1,
    opset: int = DEFAULT_OPSET,
    *,
    dynamic_batch: bool = False,
) -> Path:
    """Write the whole scorer of a fitted :class:`~fod.api.FOD` (or a model file, read with
    :meth:`FOD.load <fod.api.FOD.load>`) as one ONNX graph to ``out``; returns its path.

    The graph takes ``images`` (batch_size, 3, S, S) float32 RGB in [0, 1] and returns
    ``maps`` (batch_size, S, S) and ``scores`` (batch_size,), exactly what
    :meth:`FOD.score <fod.api.FOD.score>` computes. ``dynamic_batch=True`` lets the graph take
    any batch size (``batch_size`` is then only the size traced). The file is written
    atomically.
    """
    from fod.io import atomic_write
    from fod.model.correlation import plain_correlation_mode

    batch_size, opset = _check_options(batch_size, opset)
    onnx = _import("onnx")
    model = _as_model(model_or_path)
    detector = _cpu_detector(model)
    size = model.config.image_size
    generator = torch.Generator().manual_seed(_TRACE_SEED)
    example = torch.rand(batch_size, 3, size, size, generator=generator)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), plain_correlation_mode():
        # Shape checks turned into constants, and the notice that this exporter is the legacy
        # one: both expected, neither actionable for the user.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        torch.onnx.export(
            detector,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            do_constant_folding=True,
            dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)}
            if dynamic_batch
            else None,
            dynamo=False,
        )
    graph = onnx.load_from_string(buffer.getvalue())
    # The tracer leaves the outputs' shapes symbolic; state them, as for the input.
    batch: int | str = "batch" if dynamic_batch else batch_size
    shapes = {INPUT_NAME: [batch, 3, size, size], "maps": [batch, size, size], "scores": [batch]}
    for value in [*graph.graph.input, *graph.graph.output]:
        _set_shape(value, shapes[value.name])
    graph.doc_string = (
        "Focus the Discrepancy anomaly detector (fod): images (B, 3, S, S) float32 RGB in "
        "[0, 1] -> maps (B, S, S), scores (B,)"
    )
    onnx.helper.set_model_props(graph, metadata(model, batch_size, opset, dynamic_batch))
    onnx.checker.check_model(graph, full_check=True)  # shape inference must agree
    return atomic_write(Path(out).expanduser(), lambda p: onnx.save(graph, str(p)))


def _set_shape(value: Any, dims: list[int | str]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


@dataclass
class CheckResult:
    """onnxruntime against PyTorch on one batch: largest absolute differences and the
    tolerance they must stay within."""

    batch_size: int
    maps_max_diff: float
    scores_max_diff: float
    tolerance: float
    scale: float  # largest |value| of the PyTorch maps and scores

    @property
    def ok(self) -> bool:
        return max(self.maps_max_diff, self.scores_max_diff) <= self.tolerance

    def summary(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        return (
            f"onnxruntime vs PyTorch on a batch of {self.batch_size}: max |difference| maps "
            f"{self.maps_max_diff:.3g}, scores {self.scores_max_diff:.3g} (values up to "
            f"{self.scale:.3g}, tolerance {self.tolerance:.3g}): {verdict}"
        )


def run_onnx(path: str | Path, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(maps, scores) of an exported file for ``images`` with onnxruntime on the CPU, using as
    many threads as PyTorch does."""
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"{path}: onnxruntime cannot load this file ({exc})") from exc
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    maps, scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(x, "float32")})
    return maps, scores


def check_onnx(
    path: str | Path,
    model_or_path: Any,
    images: torch.Tensor | None = None,
    *,
    seed: int = 0,
    raise_on_mismatch: bool = False,
) -> CheckResult:
    """Score ``images`` with onnxruntime and with the PyTorch model, and compare.

    ``images`` default to a seeded random batch of the exported batch size (2 for a graph with
    a dynamic batch). ``raise_on_mismatch`` raises :class:`ExportError` when a difference
    exceeds ATOL + RTOL * (largest |value|).
    """
    model = _as_model(model_or_path)
    if images is None:
        size = model.config.image_size
        batch = read_metadata(path).get("batch_size") or 2
        generator = torch.Generator().manual_seed(seed)
        images = torch.rand(batch, 3, size, size, generator=generator)
    ref_maps, ref_scores = model.score(images)
    ref_maps, ref_scores = ref_maps.numpy(), ref_scores.numpy()
    maps, scores = run_onnx(path, images)
    if maps.shape != ref_maps.shape or scores.shape != ref_scores.shape:
        raise ExportError(
            f"{path}: the exported graph returns maps {maps.shape} and scores {scores.shape}, "
            f"PyTorch {ref_maps.shape} and {ref_scores.shape}"
        )
    scale = float(max(np.abs(ref_maps).max(), np.abs(ref_scores).max()))
    result = CheckResult(
        batch_size=int(ref_scores.shape[0]),
        maps_max_diff=float(np.abs(maps.astype(np.float64) - ref_maps).max()),
        scores_max_diff=float(np.abs(scores.astype(np.float64) - ref_scores).max()),
        tolerance=ATOL + RTOL * scale,
        scale=scale,
    )
    if raise_on_mismatch and not result.ok:
        raise ExportError(
            f"{path}: the exported graph scores differently from the model: "
            f"{result.summary()}. Export again with this fod and onnxruntime, or report it."
        )
    return result


__all__ = [
    "ATOL",
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "RTOL",
    "CheckResult",
    "ExportError",
    "check_onnx",
    "export_onnx",
    "metadata",
    "read_metadata",
    "run_onnx",
]
