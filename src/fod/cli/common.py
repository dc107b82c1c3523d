"""Options shared by several subcommands, and turning them into a config.

Every training option defaults to None on the command line, so only what the user typed
overrides :class:`~fod.config.FODConfig`'s defaults (the paper's settings); the same
distinction lets ``fod test --image-size 128`` be checked against a model file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fod.data import LAYOUTS
from fod.model.variant import REFERENCES, SCORES

#: Exit codes: a refused input or setting (FODError, usage error), and Ctrl-C (128 + SIGINT).
EXIT_ERROR = 2
#: ``fod predict``: every readable image was scored, some could not be read (listed).
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

#: Command-line dest -> FODConfig / Variant key, for the training options.
_CONFIG_OPTIONS = {
    "backbone": "backbone",
    "weights": "weights",
    "layers": "layers",
    "image_size": "image_size",
    "d_model": "d_model",
    "heads": "heads",
    "num_layers": "num_layers",
    "ffn_ratio": "ffn_ratio",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "lambda1": "lambda1",
    "lambda2": "lambda2",
    "seed": "seed",
    "reference": "reference",
    "coreset_size": "coreset_size",
    "score": "score",
    "head": "head",
    "head_parts": "head_parts",
    "holdout": "holdout",
    "calibration": "calibration",
    "shrinkage": "shrinkage",
    "bank_size": "bank_size",
    "pooled_bank_size": "pooled_bank_size",
    "bank_selection": "bank_selection",
    "nearest_pool": "nearest_pool",
    "validation": "validation",
    "image_rule": "image_rule",
    "band_members": "band_members",
    "anomaly_placement": "anomaly_placement",
    "segmenter": "segmenter",
    "segmenter_context": "segmenter_context",
}


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)",
    )


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="training precision: fp32, or bf16 / fp16 autocast of the transformers "
        "(the correlation kernel stays in float32; default: fp32)",
    )


def add_layout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=None,
        help="data set folder layout (default: detected from the folders)",
    )


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf`` are refused as a usage error)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_force_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"replace an existing output file even if it is not {what}",
    )


def add_masks_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-missing-masks",
        action="store_true",
        help="accept anomalous test images without a mask (pixel metrics are then left out)",
    )


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """Preset, backbone, model, variant, head and training options (defaults: the preset's)."""
    from fod.config import (
        ANOMALY_PLACEMENTS,
        BAND_MEMBERS,
        BANK_SELECTIONS,
        CALIBRATIONS,
        HEAD_PARTS,
        HEADS,
        IMAGE_RULES,
        PRESETS,
        SHRINKAGES,
        VALIDATIONS,
        FODConfig,
    )
    from fod.training.shrinkage import CANDIDATES as SHRINKAGE_CANDIDATES
    from fod.training.validation import BAND_MIN_HELDOUT

    d = FODConfig()
    p = FODConfig.paper()
    v = d.variant
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="starting point of every setting below: default (a small FOD transformer that "
        "trains in minutes on a CPU, scored by the calibrated head) or paper (the paper's "
        "model, schedule and score exactly); options given explicitly override it",
    )
    g = parser.add_argument_group("backbone")
    g.add_argument("--backbone", help=f"timm model name (default: {d.backbone})")
    g.add_argument(
        "--weights",
        help="local weights file for the backbone (needed for any backbone other than "
        "efficientnet_lite0/1/2, whose weights ship as pip packages)",
    )
    g.add_argument(
        "--layers",
        type=int,
        nargs="+",
        metavar="I",
        help="backbone feature indices, one per level (default: the maps at stride 8 and 16)",
    )
    g.add_argument(
        "--image-size", type=int, help=f"image side S in pixels (default: {d.image_size})"
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--d-model",
        type=int,
        nargs="+",
        metavar="D",
        help=f"transformer width per level (default: {' '.join(map(str, d.d_model))}; "
        f"paper: {' '.join(map(str, p.d_model))})",
    )
    g.add_argument(
        "--heads", type=int, help=f"attention heads (default: {d.heads}; paper: {p.heads})"
    )
    g.add_argument(
        "--num-layers",
        type=int,
        help=f"encoder layers (default: {d.num_layers}; paper: {p.num_layers})",
    )
    g.add_argument("--ffn-ratio", type=int, help=f"FFN width / d (default: {d.ffn_ratio})")
    g = parser.add_argument_group("variant (the paper's ablation switches)")
    g.add_argument("--no-intra", action="store_true", help="switch off the intra branch")
    g.add_argument("--no-inter", action="store_true", help="switch off the inter branch")
    g.add_argument("--no-entropy", action="store_true", help="drop the entropy terms")
    g.add_argument(
        "--reference",
        choices=REFERENCES,
        help=f"inter-branch reference features (default: {v.reference})",
    )
    g.add_argument(
        "--coreset-size", type=int, help=f"maps in a coreset reference (default: {v.coreset_size})"
    )
    g.add_argument(
        "--score",
        choices=SCORES,
        help=f"per-token score (default: {v.score}; rec when both branches are off)",
    )
    g.add_argument(
        "--output-projection",
        action="store_true",
        help="apply the attention output projection (the authors' code discards it)",
    )
    g = parser.add_argument_group("scoring head")
    g.add_argument(
        "--head",
        choices=HEADS,
        help=f"token scores: calibrated (parts standardised on held-out good images) or "
        f"paper (spec section 6) (default: {d.head}; paper: {p.head})",
    )
    g.add_argument(
        "--head-parts",
        nargs="+",
        choices=HEAD_PARTS,
        metavar="PART",
        help=f"parts the calibrated head sums, from {', '.join(HEAD_PARTS)}; pooled and wide "
        "(the nearest search on 3 x 3 and 7 x 7 token averages) add to the heat map only; add "
        "wide for defects that are large, faint regions "
        f"(default: {' '.join(d.head_parts)})",
    )
    g.add_argument(
        "--holdout",
        type=float,
        help=f"fraction of the good images held out to calibrate the head and the threshold; "
        "cross-fitted, 1 / holdout folds of heads each hold out that fraction "
        f"(default: {d.holdout:g}; paper: {p.holdout:g})",
    )
    g.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        help="holdout: hold out that fraction of the good images from the transformers and the "
        "heads; crossfit: split the good images into 1 / holdout folds, score each with heads "
        "fitted on the others, train on all of them (five head fits: a longer run); auto: "
        f"crossfit while the held-out fraction would be under {BAND_MIN_HELDOUT} images, "
        "holdout from there on "
        f"(default: {d.calibration})",
    )
    g.add_argument(
        "--shrinkage",
        choices=SHRINKAGES,
        help="how the Gaussian parts of the head choose their shrinkage towards a shared "
        "covariance: likelihood: the weight that gives held-out good images the highest "
        "likelihood; validation: that weight, unless one of "
        f"{', '.join(f'{c:g}' for c in SHRINKAGE_CANDIDATES)} beats it on the synthetic "
        "validation by more than one paired standard error (then the best of those) "
        f"(default: {d.shrinkage})",
    )
    g.add_argument(
        "--bank-size",
        type=int,
        help=f"good tokens per level in the nearest part's memory bank (default: {d.bank_size})",
    )
    g.add_argument(
        "--pooled-bank-size",
        type=int,
        help="token averages per level in the memory bank of the pooled part, and of the wide "
        f"part (default: {d.pooled_bank_size})",
    )
    g.add_argument(
        "--bank-selection",
        choices=BANK_SELECTIONS,
        help="coverage: half the bank drawn at random, half the good tokens farthest from it "
        f"(rare good patterns); random: all drawn at random (default: {d.bank_selection})",
    )
    g.add_argument(
        "--nearest-pool",
        type=int,
        metavar="K",
        help="the nearest part compares each token averaged with its K x K neighbours "
        "(tokens are already 3 x 3 averages of the backbone's map; odd K, 1 = each token alone; "
        f"default: {d.nearest_pool})",
    )
    g.add_argument(
        "--validation",
        choices=VALIDATIONS,
        help="synthetic: add synthetic anomalies to the held-out images to weigh the levels "
        "in the image score and set the threshold; none: plain average, largest held-out "
        f"score (default: {d.validation}; paper: {p.validation})",
    )
    g.add_argument(
        "--image-rule",
        choices=IMAGE_RULES,
        help="band: the image score averages the weightings of levels and parts that the "
        "synthetic validation cannot tell from the best (those --band-members names, each "
        "over its spread on held-out good images); single: the one of them nearest the plain "
        "average; auto: band from "
        f"{BAND_MIN_HELDOUT} held-out images on, single below (default: {d.image_rule})",
    )
    g.add_argument(
        "--band-members",
        choices=BAND_MEMBERS,
        help="which weightings of that band the band rule averages: simplest, those with the "
        "fewest parts (the one-standard-error rule); all, every one "
        f"(default: {d.band_members})",
    )
    g.add_argument(
        "--anomaly-placement",
        choices=ANOMALY_PLACEMENTS,
        help="where the synthetic anomalies of the validation and the segmenter fall: content, "
        "only where the image has texture (on the product, not on a plain background); "
        f"anywhere, the whole image (default: {d.anomaly_placement})",
    )
    g.add_argument(
        "--segmenter",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add to the heat map an anomaly segmenter trained on synthetic anomalies made on "
        "the training images (default: on; paper: off)",
    )
    g.add_argument(
        "--segmenter-context",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="give the segmenter a path that sees 12 x 12 tokens at once and train it on "
        "anomalies of up to half the image, for defects that are large faint regions "
        "(default: off)",
    )
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=int, help=f"default: {d.epochs}; paper: {p.epochs}")
    g.add_argument("--batch-size", type=int, help=f"default: {d.batch_size}; paper: {p.batch_size}")
    g.add_argument(
        "--lr",
        type=finite_float,
        help=f"Adam learning rate (default: {d.lr:g}; paper: {p.lr:g})",
    )
    g.add_argument("--lambda1", type=finite_float, help=f"Div weight (default: {d.lambda1:g})")
    g.add_argument("--lambda2", type=finite_float, help=f"entropy weight (default: {d.lambda2:g})")
    g.add_argument("--seed", type=int, help=f"default: {d.seed}")
    g.add_argument(
        "--cache",
        metavar="DIR",
        help="keep backbone features in DIR and reuse them when the images are unchanged",
    )


def config_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config and variant keys the user gave on the command line."""
    options = {
        key: getattr(args, dest)
        for dest, key in _CONFIG_OPTIONS.items()
        if getattr(args, dest, None) is not None
    }
    if options.get("weights") is not None:
        options["weights"] = str(Path(options["weights"]).expanduser().resolve())
    if getattr(args, "no_intra", False):
        options["intra"] = False
    if getattr(args, "no_inter", False):
        options["inter"] = False
    if getattr(args, "no_entropy", False):
        options["entropy"] = False
    if getattr(args, "output_projection", False):
        options["output_projection"] = True
    if options.get("intra") is False and options.get("inter") is False:
        # the patch-wise row of the ablation: reconstruction only
        options.setdefault("score", "rec")
        options.setdefault("entropy", False)
    return options


def config_from_args(args: argparse.Namespace) -> Any:
    """A validated FODConfig from the training options (ConfigError on bad values)."""
    from fod.config import make_config, preset_config

    preset = getattr(args, "preset", None)
    base = preset_config(preset) if preset else None
    return make_config(base, **config_options(args))


def state_path_for(model_path: str | Path) -> Path:
    """``model.pt`` -> ``model.state.pt``: where an unfinished training run keeps its state."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.state{path.suffix or '.pt'}")


def category_entry(results: dict[str, Any]) -> dict[str, Any]:
    """A test result without the per-image list: the entry of one category in results.json."""
    return {k: v for k, v in results.items() if k not in ("images", "category", "report")}


def metrics_table(results: dict[str, Any]) -> str:
    """Markdown table of one category: each defect type against all good images, then all."""
    from fod.report import markdown_table

    columns = [
        ("type", "Defect type"),
        ("count", "Images"),
        ("image_auroc", "Image AUROC"),
        ("pixel_auroc", "Pixel AUROC"),
        ("aupro", "AUPRO"),
        ("f1_max", "F1-max"),
    ]
    # F1-max is an image-level figure of the whole test set; per type it is left blank
    rows = [
        {"type": name, **entry, "f1_max": ""}
        for name, entry in results.get("per_defect", {}).items()
    ]
    counts = results.get("counts", {})
    overall = {k: results.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max")}
    rows.append({"type": "all", "count": counts.get("anomalous"), **overall})
    return markdown_table(rows, columns)


def eprint(*parts: Any) -> None:
    import sys

    print(*parts, file=sys.stderr)
