"""``fod demo``: generate data, train, test and write a report, in a few CPU minutes."""

from __future__ import annotations

import argparse

from fod.cli import common


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from fod.demo import DEMO_CONFIG

    parser = subparsers.add_parser(
        "demo",
        help="the whole job on generated data (no data set or download needed)",
        description=(
            "Generate a seeded data set (fabric, tiles, circuit board with local and logical "
            "defects), train FOD on each category with a CPU preset, test it, and write a "
            "report folder with results.md/.json, heat-map panels and loss plots."
        ),
    )
    parser.add_argument("--out", default="fod-demo", metavar="DIR", help="default: fod-demo")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")
    parser.add_argument(
        "--epochs", type=int, default=DEMO_CONFIG.epochs, help="training epochs per category"
    )
    common.add_device_option(parser)
    common.add_quiet_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from fod.demo import DEMO_CONFIG, run_demo
    from fod.io import check_writable

    check_writable(args.out, folder=True)
    config = DEMO_CONFIG.replace(epochs=args.epochs)
    run_demo(args.out, config, args.seed, args.device, progress=not args.quiet)
    return 0
