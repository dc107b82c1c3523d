"""FODConfig: every choice of a run in one JSON-able, validated object.

The config travels inside every model file and training state, so a model can always say how
it was made, and a file made for one configuration is refused by code expecting another
(:meth:`FODConfig.model_signature`). Defaults follow the paper (spec sections 2 to 5):
d = 256 / 512 for the stride-8 / stride-16 level, 3 layers, 8 heads, FFN 4d, Adam at 1e-4,
batch size 1, 100 epochs, lambda1 = lambda2 = 0.5, seed 3407.

>>> cfg = FODConfig(image_size=128, epochs=5)
>>> FODConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from fod.errors import FODError
from fod.model.variant import Variant

#: Keys that fix the shapes and the meaning of a model's weights.
SIGNATURE_KEYS: tuple[str, ...] = (
    "backbone",
    "layers",
    "image_size",
    "d_model",
    "heads",
    "num_layers",
    "ffn_ratio",
    "variant",
)
#: Keys that only steer training; a resumed run must keep them (except ``epochs``).
TRAINING_KEYS: tuple[str, ...] = ("epochs", "batch_size", "lr", "lambda1", "lambda2", "seed")
#: Smallest image side: the stride-16 level needs at least 2 x 2 tokens.
MIN_IMAGE_SIZE = 32
#: Images per forward pass where no gradient flows (backbone features, scoring of features):
#: it bounds memory and does not change the numbers.
INFERENCE_BATCH_SIZE = 16


class ConfigError(FODError, ValueError):
    """A configuration value that cannot be used (the message names the key and the fix)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _finite(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    if not positive and value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class FODConfig:
    """Backbone, model sizes, ablation variant and training settings of one FOD model.

    ``d_model`` has one width per feature level (the default backbone has two, at stride 8 and
    16); ``layers`` are indices into the backbone's ``feature_info`` (None: stride 8 and 16).
    ``weights`` is a local state-dict file for backbones that do not ship their weights.
    """

    backbone: str = "efficientnet_lite2"
    weights: str | None = None
    layers: tuple[int, ...] | None = None
    image_size: int = 256
    d_model: tuple[int, ...] = (256, 512)
    heads: int = 8
    num_layers: int = 3
    ffn_ratio: int = 4
    variant: Variant = field(default_factory=Variant)
    epochs: int = 100
    batch_size: int = 1
    lr: float = 1e-4
    lambda1: float = 0.5
    lambda2: float = 0.5
    seed: int = 3407

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise ConfigError(f"backbone must be a model name, got {self.backbone!r}")
        if self.weights is not None:
            put("weights", str(self.weights))
        if self.layers is not None:
            if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, Sequence):
                raise ConfigError(f"layers must be a list of feature indices, got {self.layers!r}")
            layers = tuple(self.layers)
            if not layers or not all(_is_int(i) and i >= 0 for i in layers):
                raise ConfigError(f"layers must be non-negative feature indices, got {layers!r}")
            if len(set(layers)) != len(layers):
                raise ConfigError(f"layers must not repeat an index, got {layers!r}")
            put("layers", tuple(sorted(layers)))
        size = _positive_int("image_size", self.image_size, MIN_IMAGE_SIZE)
        put("image_size", size)
        d_model = (self.d_model,) if _is_int(self.d_model) else self.d_model
        if isinstance(d_model, (str, bytes)) or not isinstance(d_model, Sequence) or not d_model:
            raise ConfigError(
                f"d_model must be one width per feature level, e.g. (256, 512); got {d_model!r}"
            )
        d_model = tuple(d_model)
        heads = _positive_int("heads", self.heads)
        for d in d_model:
            _positive_int("each d_model entry", d)
            if d % heads:
                raise ConfigError(f"d_model {d} is not divisible by heads ({heads})")
            if d % 4:
                raise ConfigError(
                    f"d_model {d} must be divisible by 4 (the 2D sine-cosine position code)"
                )
        put("d_model", d_model)
        if self.layers is not None and len(self.layers) != len(d_model):
            raise ConfigError(
                f"layers {list(self.layers)} pick {len(self.layers)} feature levels but d_model "
                f"{list(d_model)} has {len(d_model)} widths; give one d_model per layer"
            )
        _positive_int("num_layers", self.num_layers)
        _positive_int("ffn_ratio", self.ffn_ratio)
        if isinstance(self.variant, Mapping):
            try:
                put("variant", Variant.from_dict(dict(self.variant)))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"invalid variant {dict(self.variant)!r}: {exc}") from exc
        elif not isinstance(self.variant, Variant):
            raise ConfigError(f"variant must be a fod.model.Variant, got {self.variant!r}")
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        put("lr", _finite("lr", self.lr, positive=True))
        put("lambda1", _finite("lambda1", self.lambda1))
        put("lambda2", _finite("lambda2", self.lambda2))
        _positive_int("seed", self.seed, 0)

    # ------------------------------------------------------------------ levels

    @property
    def num_levels(self) -> int:
        return len(self.d_model)

    def check_levels(self, levels: int, backbone: str | None = None) -> None:
        """Refuse a d_model whose length differs from the backbone's number of levels."""
        if levels != len(self.d_model):
            name = backbone or self.backbone
            raise ConfigError(
                f"d_model {list(self.d_model)} has {len(self.d_model)} widths but backbone "
                f"{name} gives {levels} feature levels; pass one d_model per level "
                f"(e.g. --d-model {' '.join(['256'] * levels)})"
            )

    # ------------------------------------------------------------------ dicts

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (lists, not tuples), with the variant as a dict."""
        out = asdict(self)
        out["variant"] = self.variant.to_dict()
        out["d_model"] = list(self.d_model)
        out["layers"] = None if self.layers is None else list(self.layers)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FODConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not pass)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a config must be a dict, got {type(data).__name__}")
        check_keys(data)
        return cls(**dict(data))

    def replace(self, **changes: Any) -> FODConfig:
        """A copy with some fields changed (validated again)."""
        check_keys(changes)
        return replace(self, **changes)

    # ------------------------------------------------------------------ signatures

    def model_signature(self) -> dict[str, Any]:
        """The settings that determine the weights' shapes and meaning (JSON-able)."""
        full = self.to_dict()
        return {key: full[key] for key in SIGNATURE_KEYS}

    def differences(
        self, other: FODConfig | Mapping[str, Any], keys: Sequence[str] | None = None
    ) -> dict[str, tuple[Any, Any]]:
        """``{key: (ours, theirs)}`` for each of ``keys`` (default: all) present in ``other``
        whose values differ; tuples and lists compare equal."""
        mine = self.to_dict()
        theirs = other.to_dict() if isinstance(other, FODConfig) else dict(other)
        out: dict[str, tuple[Any, Any]] = {}
        for key in keys if keys is not None else list(mine):
            if key in theirs and comparable(mine[key]) != comparable(theirs[key]):
                out[key] = (comparable(mine[key]), comparable(theirs[key]))
        return out


def make_config(base: FODConfig | Mapping[str, Any] | None = None, **options: Any) -> FODConfig:
    """``base`` (default: the paper's settings) with config fields and Variant switches
    (``intra``, ``inter``, ``entropy``, ``reference``, ``coreset_size``, ``score``,
    ``output_projection``) changed by keyword."""
    config = base if isinstance(base, FODConfig) else FODConfig.from_dict(dict(base or {}))
    variant_keys = [f.name for f in fields(Variant)]
    known = config_keys() + variant_keys
    _refuse_unknown(options, known, "option", "known")
    changes = {k: v for k, v in options.items() if k not in variant_keys}
    switches = {k: v for k, v in options.items() if k in variant_keys}
    if switches:
        variant = changes.get("variant", config.variant)
        current = variant.to_dict() if isinstance(variant, Variant) else dict(variant)
        try:
            changes["variant"] = Variant(**{**current, **switches})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid variant: {exc}") from exc
    return config.replace(**changes) if changes else config


def comparable(value: Any) -> Any:
    """``value`` in a form where tuples and lists compare equal and dicts by value (configs
    read back from JSON or a model file hold lists where the dataclass holds tuples)."""
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
    if isinstance(value, Variant):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: comparable(v) for k, v in value.items()}
    return value


def config_keys() -> list[str]:
    return [f.name for f in fields(FODConfig)]


def check_keys(data: Mapping[str, Any]) -> None:
    """Refuse unknown config keys, suggesting the closest known one."""
    _refuse_unknown(data, config_keys(), "config key", "known keys")


def _refuse_unknown(keys: Iterable[Any], known: Sequence[str], what: str, listing: str) -> None:
    """ConfigError for the first of ``keys`` not in ``known``, naming the closest known one."""
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {what} {key!r}{hint} ({listing}: {', '.join(known)})")


__all__ = [
    "INFERENCE_BATCH_SIZE",
    "MIN_IMAGE_SIZE",
    "SIGNATURE_KEYS",
    "TRAINING_KEYS",
    "ConfigError",
    "FODConfig",
    "check_keys",
    "comparable",
    "config_keys",
    "make_config",
]
