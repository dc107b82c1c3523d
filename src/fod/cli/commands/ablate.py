"""``fod ablate DATA --out DIR``: the paper's ablation table on one data set.

Trains and tests the eight variants of spec section 8 with the same configuration, seed and
backbone features, and writes ``ablation.md``, ``ablation.csv`` and ``ablation.json`` beside
the paper's image-AUROC column. Finished rows are kept in ``DIR/rows`` and not redone.
"""

from __future__ import annotations

import argparse

from fod.cli import common


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from fod.experiments.ablation_rows import ablation_rows

    keys = [row.key for row in ablation_rows()]
    parser = subparsers.add_parser(
        "ablate",
        help="run the paper's ablation table (8 variants) on a data set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", metavar="DATA", help="one category folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--rows", nargs="+", choices=keys, metavar="ROW", help=f"a subset of {', '.join(keys)}"
    )
    common.add_train_options(parser)
    common.add_layout_option(parser)
    common.add_device_option(parser)
    common.add_quiet_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fod.devices import resolve_device
    from fod.experiments.ablation import run_ablation
    from fod.io import check_writable

    config = common.config_from_args(args)
    check_writable(args.out, folder=True)  # before the first row is trained
    run_ablation(
        args.data,
        args.out,
        config,
        rows=args.rows,
        layout=args.layout,
        device=resolve_device(args.device),
        progress=not args.quiet,
    )
    out = Path(args.out)
    print((out / "ablation.md").read_text(encoding="utf-8"))
    names = ", ".join(str(out / f"ablation.{ext}") for ext in ("md", "csv", "json"))
    print(f"tables written to {names}")
    return 0
