"""``fod bench step`` (time and memory of a training step and a test image, fast vs direct)
and ``fod bench baselines`` (training-free scorers on FOD's own features)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from fod.bench import baselines, step

    parser = subparsers.add_parser(
        "bench",
        help="benchmarks: speed (fod bench step), feature baselines (fod bench baselines)",
        description="Benchmarks of speed and of what the features alone achieve.",
    )
    kinds = parser.add_subparsers(dest="bench", metavar="KIND", required=True)
    sub = kinds.add_parser(
        "step",
        help="one training step and one test image, fast path vs direct transcription",
        description=step.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    step.add_arguments(sub)
    sub = kinds.add_parser(
        "baselines",
        help="training-free scorers (mean, Gaussian, nearest neighbour) on FOD's features",
        description=baselines.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    baselines.add_arguments(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    from fod.bench import baselines, step

    if args.bench == "baselines":
        baselines.run_from_args(args)
    else:
        step.run_from_args(args)
    return 0
