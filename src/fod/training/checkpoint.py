"""Model files: one ``.pt`` holding everything needed to score images again.

A model file is a dict of plain data (tensors, numbers, strings, lists, dicts), written
atomically and read with ``torch.load(weights_only=True)``: opening a model file someone sent
you can never run code. It holds the format name and version, the config, the backbone's
description (the backbone's own weights are not copied: they are rebuilt from the same offline
source), each level's :class:`~fod.model.LevelSpec` and state dict (with its reference
features), the decision threshold and the training-score statistics used to colour heat maps,
the training history, and the fod version that wrote it.

Every way a file can fail to load ends in a :class:`~fod.errors.CheckpointError` that names
the file and what to do about it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fod._version import __version__
from fod.backbone import FeatureExtractor, create_backbone
from fod.config import SIGNATURE_KEYS, FODConfig, comparable, legacy_config
from fod.errors import CheckpointError, FODWarning, OutputError, TrainingError, option
from fod.io import UnsafeFileError, load_tensors, save_tensors, stamp_problem
from fod.model import FODTransformer, LevelSpec
from fod.scoring.head import CalibratedHead
from fod.scoring.segmenter import AnomalySegmenter
from fod.training.finite import is_finite_number, nonfinite
from fod.training.trainer import STATE_FORMAT

MODEL_FORMAT = "fod-model"
MODEL_VERSION = 1
_BACKBONE_KEYS = ("name", "layers", "channels", "strides")


def _plain(obj: Any) -> Any:
    """Only types ``weights_only`` loading accepts: numpy and paths become Python values."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a model file")


def save_model_file(
    path: str | Path,
    config: FODConfig,
    backbone: FeatureExtractor | Mapping[str, Any],
    levels: Sequence[FODTransformer],
    *,
    threshold: float,
    stats: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    heads: Sequence[CalibratedHead] | None = None,
    segmenter: AnomalySegmenter | None = None,
) -> Path:
    """Write a model file atomically; ``stats`` are the normal-score statistics (see
    :class:`fod.api.FOD`)."""
    path = Path(path)
    bad = nonfinite(
        (f"level {i} {k}", v) for i, m in enumerate(levels) for k, v in m.state_dict().items()
    )
    bad += nonfinite(
        (f"level {i} head {k}", v)
        for i, h in enumerate(heads or [])
        for k, v in h.state_dict().items()
    )
    bad += nonfinite(
        (f"segmenter {k}", v) for k, v in (segmenter.state_dict() if segmenter else {}).items()
    )
    if bad or not is_finite_number(threshold):
        what = f"non-finite weights ({', '.join(bad[:3])})" if bad else f"threshold {threshold}"
        raise TrainingError(
            f"{path}: not written: the model has {what}, so it would score every image NaN. "
            "Train again with a lower learning rate."
        )
    describe = backbone.describe() if isinstance(backbone, FeatureExtractor) else dict(backbone)
    if (config.head == "calibrated") != (heads is not None):
        raise ValueError(f"config head {config.head!r} but heads given: {heads is not None}")
    if heads is not None and len(heads) != len(levels):
        raise ValueError(f"{len(heads)} heads for {len(levels)} levels")
    if config.segmenter != (segmenter is not None):
        raise ValueError(
            f"config segmenter {config.segmenter} but segmenter given: {segmenter is not None}"
        )
    entries = []
    for i, m in enumerate(levels):
        entry = {
            "spec": m.spec.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
        }
        if heads is not None:
            entry["head"] = {k: v.detach().cpu() for k, v in heads[i].state_dict().items()}
        entries.append(entry)
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "fod_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.to_dict(),
        "backbone": describe,
        "levels": entries,
        "segmenter": segmenter.to_state() if segmenter is not None else None,
        "threshold": float(threshold),
        "stats": dict(stats or {}),
        "history": list(history or []),
    }
    return save_tensors(path, _plain(payload))


# ------------------------------------------------------------------------------------ loading


_IMAGE_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


def _why(path: Path, exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in words, with the fix (never torch's own
    text, whose advice to load with ``weights_only=False`` must not reach a user)."""
    if isinstance(exc, UnsafeFileError):
        return (
            f"it contains code or objects that fod does not load (pickled Python objects: "
            f"{', '.join(exc.names[:3])}); loading them could run code. Use a file written by "
            "`fod train` or FOD.save()."
        )
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError:
        head = b""
    if head.startswith(_IMAGE_SIGNATURES):
        return (
            "it is an image, not a model file. The model file comes first: "
            "`fod test MODEL DATA`, `fod predict MODEL IMAGES...`."
        )
    if not head:
        return "the file is empty (an interrupted copy?). Copy it again or retrain."
    return (
        f"it is not a fod model file, or it is damaged, e.g. truncated by an interrupted copy "
        f"({type(exc).__name__}). Copy it again, or retrain with `fod train`."
    )


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The raw dict of a model file, checked for format and version (no models built)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"{path}: model file not found. Check the path, or train one with "
            f"`fod train DATA --out {path}`."
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: is a folder, not a model file. Give the .pt file.")
    try:
        data = load_tensors(path)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read this model file: {_why(path, exc)}") from exc
    if isinstance(data, dict) and data.get("format") == STATE_FORMAT:
        raise CheckpointError(
            f"{path}: this is a training state (an unfinished run), not a model file. Finish "
            "training with `fod train DATA --out MODEL.pt --resume`."
        )
    problem = stamp_problem(data, MODEL_FORMAT, MODEL_VERSION)
    if problem == "format":
        raise CheckpointError(
            f"{path}: not a fod model file (no '{MODEL_FORMAT}' format marker). Give a file "
            "written by `fod train` or FOD.save()."
        )
    if problem == "version":
        version = data.get("version")
        newer = isinstance(version, int) and version > MODEL_VERSION
        fix = "Upgrade fod" if newer else "Retrain the model with this fod"
        raise CheckpointError(
            f"{path}: model file format version {version!r} (written by fod "
            f"{data.get('fod_version', '?')}); this fod ({__version__}) reads version "
            f"{MODEL_VERSION}. {fix}."
        )
    for key in ("config", "backbone", "levels"):
        if key not in data:
            raise CheckpointError(f"{path}: model file has no '{key}' entry; it is corrupt.")
    return data


def check_model_target(path: str | Path, *, force: bool = False) -> Path:
    """Refuse to write a model over an existing file that is not a fod model (an image, a
    training state, anyone's data) unless ``force``."""
    path = Path(path).expanduser()
    if force or not path.is_file():
        return path
    try:
        read_model_file(path)
    except CheckpointError:
        raise OutputError(
            f"{path}: exists and is not a fod model file; writing the model would replace it. "
            f"Choose another path, or pass {option('force=True', '--force')} to replace it."
        ) from None
    return path


def _check_requested(path: Path, config: FODConfig, requested: Any) -> None:
    if requested is None:
        return
    if isinstance(requested, FODConfig):
        diff = config.differences(requested, SIGNATURE_KEYS)
    else:
        wanted = {k: v for k, v in dict(requested).items() if v is not None}
        diff = config.differences(wanted)
    if diff:
        detail = "; ".join(
            f"{key}: model has {stored!r}, requested {asked!r}"
            for key, (stored, asked) in diff.items()
        )
        names = ", ".join(diff)
        flags = ", ".join("--" + key.replace("_", "-") for key in diff)
        raise CheckpointError(
            f"{path}: the model was made with another configuration ({detail}). Leave out "
            f"{option(names, flags)} (the model file sets these), or train a model with these "
            "settings."
        )


def _check_backbone(path: Path, stored: Mapping[str, Any], backbone: FeatureExtractor) -> None:
    now = backbone.describe()
    wrong = [
        k for k in _BACKBONE_KEYS if k in stored and comparable(stored[k]) != comparable(now[k])
    ]
    if wrong:
        detail = "; ".join(f"{k}: file {stored[k]!r}, now {now[k]!r}" for k in wrong)
        raise CheckpointError(
            f"{path}: the backbone built from the model's config differs from the one it was "
            f"trained with ({detail}). Install the fod and backbone versions it was made with, "
            "or retrain."
        )
    if stored.get("weights") != now.get("weights"):
        warnings.warn(
            f"{path}: backbone weights were {stored.get('weights')!r} at training, now "
            f"{now.get('weights')!r}; scores may differ slightly",
            FODWarning,
            stacklevel=3,
        )


def _build_heads(path: Path, config: FODConfig, entries: Any) -> list[CalibratedHead] | None:
    """Each level's calibrated head (None for the paper's head)."""
    if config.head != "calibrated":
        return None
    heads = []
    for i, entry in enumerate(entries):
        try:
            spec = LevelSpec.from_dict(entry["spec"])
            state = entry["head"]
            heads.append(
                CalibratedHead.from_state_dict(
                    state,
                    config.head_parts,
                    config.variant,
                    spec.height,
                    spec.width,
                    config.nearest_pool,
                )
            )
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise CheckpointError(
                f"{path}: level {i}'s calibrated head does not match the stored config ({exc}). "
                "The file is corrupt or was edited; retrain with `fod train`."
            ) from exc
    counts = [int(h.image_weight.shape[0]) for h in heads]
    if len(set(counts)) > 1 or (config.image_rule == "single" and counts[0] != 1):
        need = "one" if config.image_rule == "single" else "as many"
        raise CheckpointError(
            f"{path}: the heads hold {counts} image-score weightings per level, but the image "
            f"rule {config.image_rule!r} needs {need} on every level. The file is corrupt or "
            "was edited; retrain with `fod train`."
        )
    return heads


def _build_segmenter(
    path: Path, config: FODConfig, state: Any, levels: Sequence[FODTransformer]
) -> AnomalySegmenter | None:
    """The anomaly segmenter (None when the config has none), checked against the levels."""
    if not config.segmenter:
        return None
    try:
        segmenter = AnomalySegmenter.from_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: the anomaly segmenter does not match the stored config ({exc}). The file "
            "is corrupt or was edited; retrain with `fod train`."
        ) from exc
    if segmenter.has_context != config.segmenter_context:
        raise CheckpointError(
            f"{path}: the stored config says segmenter_context {config.segmenter_context} but "
            f"the anomaly segmenter {'has' if segmenter.has_context else 'lacks'} the context "
            "path; the file is corrupt or was edited, retrain with `fod train`."
        )
    expected = [int(m.spec.channels) for m in levels]
    if segmenter.channels != expected:
        raise CheckpointError(
            f"{path}: the anomaly segmenter takes levels of {segmenter.channels} channels, the "
            f"model's levels have {expected}; the file is corrupt, retrain with `fod train`."
        )
    bad = nonfinite(segmenter.state_dict().items())
    if bad:
        raise CheckpointError(
            f"{path}: the anomaly segmenter holds non-finite weights ({', '.join(bad[:3])}): "
            "it would score every image NaN. Retrain with `fod train`."
        )
    return segmenter.eval()


def _build_levels(
    path: Path, config: FODConfig, entries: Any, grid: list[tuple[int, int]] | None
) -> list[FODTransformer]:
    if not isinstance(entries, list) or len(entries) != config.num_levels:
        count = len(entries) if isinstance(entries, list) else 0
        raise CheckpointError(
            f"{path}: model file has weights for {count} level(s) but its config has d_model "
            f"{list(config.d_model)} ({config.num_levels} levels); the file is corrupt."
        )
    levels = []
    for i, entry in enumerate(entries):
        try:
            spec = LevelSpec.from_dict(entry["spec"])
            expected = (config.d_model[i], config.heads, config.num_layers, config.ffn_ratio)
            got = (spec.d_model, spec.heads, spec.layers, spec.ffn_ratio)
            if got != expected:
                raise ValueError(
                    f"level {i} has (d_model, heads, layers, ffn_ratio) {got}, the config says "
                    f"{expected}"
                )
            if grid is not None and (spec.height, spec.width) != grid[i]:
                raise ValueError(
                    f"level {i} was built for a {spec.height} x {spec.width} token grid, the "
                    f"backbone gives {grid[i][0]} x {grid[i][1]} at image size {config.image_size}"
                )
            model = FODTransformer(spec, config.variant)
            model.load_state_dict(entry["state_dict"], strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: the weights do not match the stored config: {exc}. The file is "
                "corrupt or was edited; retrain with `fod train`."
            ) from exc
        bad = nonfinite(model.state_dict().items())
        if bad:
            raise CheckpointError(
                f"{path}: level {i} holds non-finite weights ({', '.join(bad[:3])}): the "
                "model would score every image NaN. Retrain with a lower learning rate."
            )
        levels.append(model.eval())
    return levels


def load_model_file(
    path: str | Path,
    device: str | torch.device = "cpu",
    requested: FODConfig | Mapping[str, Any] | None = None,
    *,
    build_backbone: bool = True,
) -> tuple[FODConfig, FeatureExtractor | None, list[FODTransformer], dict[str, Any]]:
    """Read a model file: ``(config, backbone, levels, meta)`` on ``device``.

    ``requested``: settings the caller asked for (a config, or a dict of only the keys the user
    gave, e.g. ``{"image_size": 128}``); any that differ from the stored ones are refused,
    naming the keys. ``meta`` has ``threshold``, ``stats``, ``history``, ``backbone``,
    ``fod_version``, ``created``, ``path``, ``heads`` (the calibrated heads, or None for the
    paper's head) and ``segmenter`` (None when the config has none). ``build_backbone=False``
    skips rebuilding the backbone (returned as None) and the grid check that needs it.
    """
    path = Path(path).expanduser()
    data = read_model_file(path)
    try:
        config = FODConfig.from_dict(legacy_config(data["config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the stored config is invalid ({exc}); retrain.") from exc
    _check_requested(path, config, requested)
    backbone = None
    grid = None
    if build_backbone:
        backbone = create_backbone(config.backbone, config.weights, config.layers)
        _check_backbone(path, data["backbone"], backbone)
        with torch.no_grad():
            probe = backbone(torch.zeros(1, 3, config.image_size, config.image_size))
        grid = [(int(m.shape[-2]), int(m.shape[-1])) for m in probe]
        backbone.to(device)
    levels = [m.to(device) for m in _build_levels(path, config, data["levels"], grid)]
    heads = _build_heads(path, config, data["levels"])
    if heads is not None:
        heads = [h.to(device) for h in heads]
    segmenter = _build_segmenter(path, config, data.get("segmenter"), levels)
    if segmenter is not None:
        segmenter = segmenter.to(device)
    threshold = data.get("threshold")
    if not is_finite_number(threshold):
        raise CheckpointError(
            f"{path}: the model's decision threshold is {threshold!r}, not a finite number; "
            "the file is damaged or the training diverged. Retrain with a lower learning rate."
        )
    meta = {
        "path": str(path),
        "threshold": float(threshold),
        "stats": dict(data.get("stats") or {}),
        "history": list(data.get("history") or []),
        "backbone": dict(data["backbone"]),
        "fod_version": data.get("fod_version"),
        "created": data.get("created"),
        "heads": heads,
        "segmenter": segmenter,
    }
    return config, backbone, levels, meta


__all__ = [
    "MODEL_FORMAT",
    "MODEL_VERSION",
    "check_model_target",
    "load_model_file",
    "read_model_file",
    "save_model_file",
]
