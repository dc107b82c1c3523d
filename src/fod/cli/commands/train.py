"""``fod train DATA --out MODEL.pt``: train on the good images of one category.

The training state after every epoch goes to ``MODEL.state.pt`` next to the model; after an
interruption ``--resume`` continues from it, and it is removed once the model file is written.

Under ``torchrun --nproc-per-node N -m fod train ...`` the run is data-parallel
(:mod:`fod.distributed`): ``--batch-size`` is the global batch, every rank computes the
features of its share of the images and trains on its share of each batch, and rank 0 alone
writes the state and the model file. The state does not depend on the number of processes,
so ``--resume`` works with another ``--nproc-per-node``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fod.cli import common

if TYPE_CHECKING:
    import torch

    from fod.distributed import Context


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a model on the good images of one category",
        description=(
            "Train FOD on the defect-free training images of DATA (an MVTec AD, BTAD or "
            "MVTec 3D-AD category folder, or a folder of good images) and write one model file. "
            "The decision threshold is set on held-out good images and synthetic anomalies "
            "made on them (the paper's head: the largest score of the training images)."
        ),
    )
    parser.add_argument("data", metavar="DATA", help="category folder or folder of good images")
    parser.add_argument("--out", required=True, metavar="MODEL.pt", help="model file to write")
    common.add_force_option(parser, "a fod model")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from MODEL.state.pt (same settings)",
    )
    common.add_train_options(parser)
    common.add_layout_option(parser)
    common.add_device_option(parser)
    common.add_precision_option(parser)
    common.add_quiet_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from fod import distributed

    return distributed.run_in_group(args.device, lambda ctx, device: _run(args, ctx, device))


def _run(args: argparse.Namespace, ctx: Context, device: torch.device) -> int:
    from fod import distributed
    from fod.api import FOD
    from fod.errors import CheckpointError
    from fod.io import check_not_input, check_writable
    from fod.training import check_model_target

    out = Path(args.out).expanduser()
    if out.is_dir():
        raise CheckpointError(f"{out}: is a folder; --out must be a file name like model.pt")
    state = common.state_path_for(out)
    config = common.config_from_args(args)
    # rank 0's view of the files decides for every rank (nodes need not share a file system)
    state_exists = distributed.on_main(state.exists)
    if state_exists and not args.resume:
        raise CheckpointError(
            f"{state}: a training state from an earlier, unfinished run exists. Pass --resume "
            "to continue it, or delete the file to start over."
        )

    # every output is checked before the backbone runs: a refusal costs nothing
    def check_outputs() -> None:
        check_not_input(out, [args.data], "a training image")
        check_writable(out)
        check_model_target(out, force=args.force)

    distributed.on_main(check_outputs)  # rank 0 writes the model
    resume = bool(args.resume and state_exists)
    if args.resume and not resume and ctx.is_main:
        common.eprint(f"note: no training state at {state}; training from the start")
    progress = not args.quiet and ctx.is_main
    model = FOD(
        config, device=device, cache_dir=args.cache, progress=progress, precision=args.precision
    )
    try:
        model.fit(args.data, layout=args.layout, state_path=state, resume=resume)
    except KeyboardInterrupt:
        if state.exists():
            common.eprint(
                f"interrupted: the state after the last finished epoch is in {state}; "
                "run the same command with --resume to continue"
            )
        else:
            common.eprint(
                "interrupted before the first epoch finished: nothing was saved; "
                "run the same command to start again"
            )
        return common.EXIT_INTERRUPTED
    if not ctx.is_main:
        return 0
    model.save(out, force=args.force)
    state.unlink(missing_ok=True)
    stats = model.stats
    where = f"{model.device} x {ctx.world_size} processes" if ctx.enabled else f"{model.device}"
    held = stats.get("num_holdout", 0)
    folds = stats.get("folds", 0)
    calibrated = (
        f", calibrated on all {held} good images, each held out by one of {folds} cross-fitted "
        "folds of heads"
        if folds
        else f", calibrated on {held} held-out good images"
    )
    print(
        f"trained on {stats['num_train']} images for {config.epochs} epoch(s) "
        f"({stats['train_seconds']:.1f} s on {where})"
        + (calibrated if held else "")
        + f"; threshold {model.threshold:.6g} ({stats['threshold_rule']}); model written to {out}"
    )
    report = stats.get("validation")
    if report:
        kept = report["image_weightings"]
        listed = "; ".join(
            f"{' + '.join(w['parts'])} at {' / '.join(f'{x:g}' for x in w['levels'])}" for w in kept
        )
        band = report.get("band", len(kept))
        simplest = report.get("band_members") == "simplest" and band > len(kept)
        how = (
            f"the mean of {len(kept)} weightings of parts and levels"
            + (f" (the simplest of the band's {band})" if simplest else "")
            if report["image_rule"] == "band"
            else "one weighting of parts and levels"
        )
        if report.get("image_rule_asked") == "auto":
            how += f", rule auto with {report['good_images']} held-out images"
        where = {"content": " (where they have texture)", "anywhere": " (anywhere on them)"}
        print(
            f"synthetic validation: {report['anomalies']} anomalies on "
            + _carriers(report)
            + where.get(report.get("placement"), "")
            + (", each scored by the heads of its image's fold" if folds else "")
            + f"; image score {how} ({listed}; synthetic image AUROC {report['image_auroc']:.3f}; "
            f"the heads' heat map {report['pixel_auroc']:.3f} pixel AUROC), "
            f"{report['seconds']:.1f} s"
        )
        shrinkage = report.get("shrinkage")
        if shrinkage:
            tried = ", ".join(_tried(t) for t in shrinkage["tried"])
            print(
                f"Gaussian shrinkage: {_weight(shrinkage['chosen'])} ({shrinkage['rule']}; "
                f"synthetic image AUROC {tried}); per level and part now "
                + "; ".join(
                    ", ".join(f"{part} {w:.2f}" for part, w in level.items())
                    for level in stats.get("head_shrinkage", [])
                )
            )
    seg = stats.get("segmenter")
    if seg:
        print(
            f"anomaly segmenter: {seg['anomalies']} synthetic anomalies on the training images, "
            f"{seg['epochs']} epochs, loss {seg['loss'][0]:.4f} -> {seg['loss'][-1]:.4f}, "
            f"{seg['seconds']:.1f} s"
        )
    return 0


def _weight(weight: float | str) -> str:
    """A shrinkage weight as the report names it: a number, or the likelihood's choice."""
    return "the likelihood's" if weight == "likelihood" else f"{weight:g}"


def _carriers(report: dict[str, Any]) -> str:
    """Which held-out images carry the validation's anomalies: all, or how many of them."""
    carriers = report.get("anomaly_images")
    if carriers is None or carriers >= report["good_images"]:
        return "the held-out images"
    return f"{carriers} of the {report['good_images']} held-out images"


def _tried(weight: dict) -> str:
    """One weight the validation tried: its synthetic AUROC and its paired gain over the
    likelihood's weight with that gain's standard error, to two significant digits (near an
    AUROC of 1 both are often below 0.001)."""
    text = f"{_weight(weight['shrinkage'])} {weight['image_auroc']:.4f}"
    if "gain" in weight:
        text += f" ({weight['gain']:+.2g} +- {weight['standard_error']:.2g})"
    return text
