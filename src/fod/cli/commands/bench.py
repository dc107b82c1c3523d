"""``fod bench step`` (time and memory of a training step and a test image, fast vs direct)
and ``fod bench baselines`` (training-free scorers on FOD's own features)."""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

#: KIND (a module under ``fod.bench``) -> one-line help.
KINDS = {
    "step": "one training step and one test image, fast path vs direct transcription",
    "baselines": "training-free scorers (mean, Gaussian, nearest neighbour) on FOD's features",
}


def _module(kind: str) -> ModuleType:
    return importlib.import_module(f"fod.bench.{kind}")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks: speed (fod bench step), feature baselines (fod bench baselines)",
        description="Benchmarks of speed and of what the features alone achieve.",
    )
    kinds = parser.add_subparsers(dest="bench", metavar="KIND", required=True)
    for kind, help_text in KINDS.items():
        module = _module(kind)
        sub = kinds.add_parser(
            kind,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    _module(args.bench).run_from_args(args)
    return 0
