"""``fod train DATA --out MODEL.pt``: train on the good images of one category.

The training state after every epoch goes to ``MODEL.state.pt`` next to the model; after an
interruption ``--resume`` continues from it, and it is removed once the model file is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fod.cli import common


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a model on the good images of one category",
        description=(
            "Train FOD on the defect-free training images of DATA (an MVTec AD, BTAD or "
            "MVTec 3D-AD category folder, or a folder of good images) and write one model file. "
            "The decision threshold is the largest score of the training images."
        ),
    )
    parser.add_argument("data", metavar="DATA", help="category folder or folder of good images")
    parser.add_argument("--out", required=True, metavar="MODEL.pt", help="model file to write")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from MODEL.state.pt (same settings)",
    )
    common.add_train_options(parser)
    common.add_layout_option(parser)
    common.add_device_option(parser)
    common.add_quiet_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from fod.api import FOD
    from fod.errors import CheckpointError

    out = Path(args.out).expanduser()
    if out.is_dir():
        raise CheckpointError(f"{out}: is a folder; --out must be a file name like model.pt")
    state = common.state_path_for(out)
    config = common.config_from_args(args)
    if state.exists() and not args.resume:
        raise CheckpointError(
            f"{state}: a training state from an earlier, unfinished run exists. Pass --resume "
            "to continue it, or delete the file to start over."
        )
    resume = bool(args.resume and state.exists())
    if args.resume and not resume:
        common.eprint(f"note: no training state at {state}; training from the start")
    model = FOD(config, device=args.device, cache_dir=args.cache, progress=not args.quiet)
    try:
        model.fit(args.data, layout=args.layout, state_path=state, resume=resume)
    except KeyboardInterrupt:
        common.eprint(
            f"interrupted: the state after the last finished epoch is in {state}; "
            "run the same command with --resume to continue"
        )
        return common.EXIT_INTERRUPTED
    model.save(out)
    state.unlink(missing_ok=True)
    stats = model.stats
    print(
        f"trained on {stats['num_train']} images for {config.epochs} epoch(s) "
        f"({stats['train_seconds']:.1f} s on {model.device}); threshold {model.threshold:.6g} "
        f"(max training score); model written to {out}"
    )
    return 0
