"""``fod bench step``: time and memory of a training step and a test image, fast vs direct."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from fod.bench import step

    parser = subparsers.add_parser(
        "bench",
        help="performance benchmarks (fod bench step)",
        description="Performance benchmarks.",
    )
    kinds = parser.add_subparsers(dest="bench", metavar="KIND", required=True)
    sub = kinds.add_parser(
        "step",
        help="one training step and one test image, fast path vs direct transcription",
        description=step.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    step.add_arguments(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    from fod.bench import step

    step.run_from_args(args)
    return 0
