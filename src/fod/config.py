"""FODConfig: every choice of a run in one JSON-able, validated object.

The config travels inside every model file and training state, so a model can always say how
it was made, and a file made for one configuration is refused by code expecting another
(:meth:`FODConfig.model_signature`).

Two presets (:data:`PRESETS`):

- ``default`` (the field defaults): the FOD transformer at a size a laptop CPU trains in
  minutes, scored by the calibrated head (:mod:`fod.scoring.head`), with a slice of the good
  images held out to calibrate it, and the anomaly segmenter (:mod:`fod.scoring.segmenter`)
  in the heat map;
- ``paper``: the paper exactly (spec sections 2 to 6): d = 256 / 512 for the stride-8 /
  stride-16 level, 3 layers, 8 heads, FFN 4d, Adam at 1e-4, batch size 1, 100 epochs,
  lambda1 = lambda2 = 0.5, seed 3407, the paper's token score, every good image trained on,
  no segmenter.

>>> cfg = FODConfig(image_size=128, epochs=5)
>>> FODConfig.from_dict(cfg.to_dict()) == cfg
True
>>> FODConfig.paper().head
'paper'
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from fod.data.anomalies import PLACEMENTS
from fod.errors import FODError, option
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
    "head",
    "head_parts",
    "nearest_pool",
    "segmenter",
    "segmenter_context",
)
#: Keys that only steer training; a resumed run must keep them (except ``epochs``).
TRAINING_KEYS: tuple[str, ...] = (
    "epochs",
    "batch_size",
    "lr",
    "lambda1",
    "lambda2",
    "seed",
    "holdout",
    "calibration",
    "shrinkage",
    "bank_size",
    "pooled_bank_size",
    "bank_selection",
)
#: How token scores are made: the paper's (spec section 6) or the calibrated head.
HEADS: tuple[str, ...] = ("calibrated", "paper")
#: Parts the calibrated head can sum (see fod.scoring.head).
HEAD_PARTS: tuple[str, ...] = ("residual", "feature", "nearest", "pooled", "wide", "paper")
#: Parts of the heat map only, never of the image score (fod.scoring.head.MAP_PARTS).
MAP_HEAD_PARTS: frozenset[str] = frozenset({"pooled", "wide"})
#: How the nearest part's memory bank picks good tokens (fod.scoring.normality.memory_bank):
#: ``coverage`` adds the tokens farthest from a random half, ``random`` draws them all.
BANK_SELECTIONS: tuple[str, ...] = ("coverage", "random")
#: What the held-out images are used for beyond the heads' calibration: ``synthetic`` adds
#: synthetic anomalies to them to weigh the levels in the image score and set the threshold
#: (fod.training.validation); ``none`` keeps the plain average and the largest held-out score.
VALIDATIONS: tuple[str, ...] = ("synthetic", "none")
#: How the synthetic validation turns its weightings of levels and parts into the image score
#: (fod.training.validation): ``band`` averages the weightings within one standard error of
#: the best (:data:`BAND_MEMBERS`), each divided by its spread on held-out good images;
#: ``single`` keeps the one of them nearest the plain average; ``auto`` is ``band`` with
#: enough held-out images to rank the weightings and ``single`` below
#: (fod.training.validation.BAND_MIN_HELDOUT).
IMAGE_RULES: tuple[str, ...] = ("auto", "band", "single")
#: Which weightings of the band the ``band`` rule averages (fod.training.validation):
#: ``simplest`` those with the fewest parts (the one-standard-error rule's choice: the simplest
#: of the models the validation cannot tell from the best), ``all`` every one.
BAND_MEMBERS: tuple[str, ...] = ("simplest", "all")
#: How the calibrated head's held-out images are had (fod.training.crossfit): ``holdout``
#: holds out a seeded slice (``holdout``) that neither the transformers nor the heads see;
#: ``crossfit`` splits the good images into round(1 / holdout) folds, scores each fold with
#: heads fitted on the others (every image is held out once) and fits the transformers and
#: the final heads on all of them (the default: every image serves both the fit and the
#: calibration); ``auto`` cross-fits when the slice would hold fewer than
#: fod.training.validation.BAND_MIN_HELDOUT images (about 100 good images) and holds out
#: a slice from there on (the default before; a shorter run with many images).
CALIBRATIONS: tuple[str, ...] = ("auto", "holdout", "crossfit")
#: How the calibrated head's Gaussian parts choose their shrinkage towards a shared covariance
#: (fod.training.shrinkage): ``likelihood`` the weight that gives the held-out good images the
#: highest likelihood; ``validation`` that weight unless one of
#: fod.training.shrinkage.CANDIDATES beats it on the synthetic validation by more than one
#: paired standard error (then the best of those). Without the synthetic validation it is
#: ``likelihood``.
SHRINKAGES: tuple[str, ...] = ("validation", "likelihood")
#: Where the synthetic anomalies of the validation and of the segmenter's training fall
#: (fod.data.anomalies.PLACEMENTS): ``content`` only where the image has texture (on the
#: product), ``anywhere`` the whole image.
ANOMALY_PLACEMENTS: tuple[str, ...] = PLACEMENTS
#: Smallest image side: the stride-16 level needs at least 2 x 2 tokens.
MIN_IMAGE_SIZE = 32
#: Images per forward pass where no gradient flows (backbone features, scoring of features):
#: it bounds memory and does not change the numbers.
INFERENCE_BATCH_SIZE = 16


class ConfigError(FODError, ValueError):
    """A configuration value that cannot be used (the message names the key and the fix)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ConfigError that names ``name`` and the
    choices."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


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
    d_model: tuple[int, ...] = (32, 64)
    heads: int = 2
    num_layers: int = 1
    ffn_ratio: int = 4
    variant: Variant = field(default_factory=Variant)
    head: str = "calibrated"
    head_parts: tuple[str, ...] = ("residual", "nearest", "pooled")
    epochs: int = 2
    batch_size: int = 8
    lr: float = 1e-3
    lambda1: float = 0.5
    lambda2: float = 0.5
    seed: int = 3407
    holdout: float = 0.2
    calibration: str = "crossfit"
    shrinkage: str = "validation"
    bank_size: int = 32768
    pooled_bank_size: int = 8192
    bank_selection: str = "coverage"
    nearest_pool: int = 1
    validation: str = "synthetic"
    image_rule: str = "auto"
    band_members: str = "simplest"
    anomaly_placement: str = "content"
    segmenter: bool = True
    segmenter_context: bool = False

    @classmethod
    def paper(cls, **changes: Any) -> FODConfig:
        """The paper's model, schedule and score (spec sections 2 to 6), then ``changes``."""
        return cls(**{**PAPER, **changes})

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
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        parts = (self.head_parts,) if isinstance(self.head_parts, str) else self.head_parts
        if not isinstance(parts, Sequence) or not parts:
            raise ConfigError(f"head_parts must be a list of parts, got {self.head_parts!r}")
        wrong = [p for p in parts if p not in HEAD_PARTS]
        if wrong or len(set(parts)) != len(parts):
            raise ConfigError(
                f"head_parts {list(parts)}: each part once, from {', '.join(HEAD_PARTS)}"
            )
        put("head_parts", tuple(p for p in HEAD_PARTS if p in parts))
        if (
            not isinstance(self.holdout, (int, float))
            or isinstance(self.holdout, bool)
            or not (0.0 <= float(self.holdout) < 1.0)
        ):
            raise ConfigError(f"holdout must be a fraction in [0, 1), got {self.holdout!r}")
        put("holdout", float(self.holdout))
        if self.head == "calibrated" and self.holdout <= 0:
            raise ConfigError(
                "the calibrated head needs held-out good images: pass "
                f"{option('holdout=0.2', '--holdout 0.2')}, or use the paper's head "
                f"({option('head=paper', '--head paper')})"
            )
        _positive_int("bank_size", self.bank_size)
        _positive_int("pooled_bank_size", self.pooled_bank_size)
        if self.head == "calibrated" and set(self.head_parts) <= MAP_HEAD_PARTS:
            raise ConfigError(
                f"head_parts {list(self.head_parts)} leave nothing for the image score "
                f"({', '.join(sorted(MAP_HEAD_PARTS))} are for the heat map only): add "
                "residual, feature or nearest"
            )
        check_choice("bank_selection", self.bank_selection, BANK_SELECTIONS)
        pool = _positive_int("nearest_pool", self.nearest_pool)
        if pool % 2 == 0:
            raise ConfigError(
                f"nearest_pool must be odd (a square of tokens centred on each), got {pool}"
            )
        check_choice("validation", self.validation, VALIDATIONS)
        check_choice("image_rule", self.image_rule, IMAGE_RULES)
        check_choice("calibration", self.calibration, CALIBRATIONS)
        check_choice("shrinkage", self.shrinkage, SHRINKAGES)
        check_choice("band_members", self.band_members, BAND_MEMBERS)
        check_choice("anomaly_placement", self.anomaly_placement, ANOMALY_PLACEMENTS)
        if not isinstance(self.segmenter, bool):
            raise ConfigError(f"segmenter must be true or false, got {self.segmenter!r}")
        if not isinstance(self.segmenter_context, bool):
            raise ConfigError(
                f"segmenter_context must be true or false, got {self.segmenter_context!r}"
            )
        if self.head != "calibrated":  # the paper's head holds no images out to validate on
            put("validation", "none")
            put("segmenter", False)
        if self.validation == "none":  # no weightings to choose among: the plain average
            put("image_rule", "single")
            put("shrinkage", "likelihood")
        if not self.segmenter:  # the context path is a part of the segmenter
            put("segmenter_context", False)
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
        out["head_parts"] = list(self.head_parts)
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


#: The paper's settings (spec sections 2 to 6), over the field defaults.
PAPER: dict[str, Any] = {
    "d_model": (256, 512),
    "heads": 8,
    "num_layers": 3,
    "head": "paper",
    "head_parts": ("paper",),
    "epochs": 100,
    "batch_size": 1,
    "lr": 1e-4,
    "holdout": 0.0,
    "validation": "none",
    "image_rule": "single",
    "segmenter": False,
    "segmenter_context": False,
}
#: Named starting points of a config: ``fod train --preset NAME``.
PRESETS: dict[str, dict[str, Any]] = {"default": {}, "paper": PAPER}


def preset_config(name: str) -> FODConfig:
    """The config of preset ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return FODConfig(**PRESETS[name])


def legacy_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config dict from before the calibrated head: the keys it lacks take the
    values every model had then (the paper's head, no held-out images); one from before the
    synthetic validation had none, and one from before the coverage bank drew its bank at
    random; none before the anomaly segmenter had one, and a segmenter before its context
    path had none; a validation before the band rule kept a single weighting, one before
    the placement on content put its anomalies anywhere, and a band before its simplest
    members averaged all of them; a calibration before cross-fitting held out a slice, and
    a shrinkage before its validation was the likelihood's; a nearest part
    before the local average searched each token alone."""
    out = dict(data)
    if "head" not in out:
        out.update(head="paper", head_parts=["paper"], holdout=0.0)
        out.setdefault("bank_size", 16384)
    out.setdefault("validation", "none")
    out.setdefault("bank_selection", "random")
    out.setdefault("segmenter", False)
    out.setdefault("segmenter_context", False)
    out.setdefault("image_rule", "single")
    out.setdefault("anomaly_placement", "anywhere")
    out.setdefault("band_members", "all")
    out.setdefault("calibration", "holdout")
    out.setdefault("shrinkage", "likelihood")
    out.setdefault("nearest_pool", 1)
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
    "ANOMALY_PLACEMENTS",
    "BAND_MEMBERS",
    "BANK_SELECTIONS",
    "CALIBRATIONS",
    "HEADS",
    "HEAD_PARTS",
    "IMAGE_RULES",
    "INFERENCE_BATCH_SIZE",
    "MIN_IMAGE_SIZE",
    "PAPER",
    "PRESETS",
    "SHRINKAGES",
    "SIGNATURE_KEYS",
    "TRAINING_KEYS",
    "VALIDATIONS",
    "ConfigError",
    "FODConfig",
    "check_choice",
    "check_keys",
    "comparable",
    "config_keys",
    "legacy_config",
    "make_config",
    "preset_config",
]
