"""``fod bench step`` (time and memory of a training step and a test image, fast vs direct)
and ``fod bench baselines`` (training-free scorers on FOD's own features).

The measurements live in ``fod.bench``; this module only declares their options and prints
their tables, so ``fod.bench`` never imports the command line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from fod.cli import common

#: KIND (a module under ``fod.bench``) -> one-line help.
KINDS = {
    "step": "one training step and one test image, fast path vs direct transcription",
    "baselines": "training-free scorers (mean, Gaussian, nearest neighbour) on FOD's features",
}


def _module(kind: str) -> ModuleType:
    return importlib.import_module(f"fod.bench.{kind}")


def _step_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--paths", nargs="+", default=["fast", "direct"], choices=["fast", "direct"]
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny sizes instead of the authors' (a smoke test of the command)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def _run_step(args: argparse.Namespace) -> dict[str, Any]:
    from fod.bench import step
    from fod.devices import resolve_device

    levels = step.TINY_LEVELS if args.tiny else step.AUTHORS_LEVELS
    heads, layers = (4, 1) if args.tiny else (8, 3)
    return step.run_benchmark(
        tuple(args.batches),
        tuple(args.paths),
        levels,
        heads,
        layers,
        args.repeats,
        args.timeout,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
        device=str(resolve_device(args.device)),
    )


def _baselines_arguments(parser: argparse.ArgumentParser) -> None:
    from fod.bench.baselines import BASELINES

    parser.add_argument("root", metavar="DATA", help="one category folder or a benchmark root")
    parser.add_argument("--image-size", type=int, default=256, help="input size (default: 256)")
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--weights", help="local weights file for a non-Lite timm backbone")
    parser.add_argument("--layers", type=int, nargs="+", help="backbone feature_info indices")
    parser.add_argument(
        "--baselines", nargs="+", choices=BASELINES, default=list(BASELINES), metavar="NAME"
    )
    parser.add_argument("--cache", metavar="DIR", help="feature cache folder (shared with fod)")
    common.add_layout_option(parser)
    common.add_quiet_option(parser)


def _run_baselines(args: argparse.Namespace) -> dict[str, Any]:
    from fod.bench.baselines import run_baselines

    return run_baselines(
        args.root,
        image_size=args.image_size,
        backbone=args.backbone,
        weights=args.weights,
        layers=args.layers,
        cache_dir=args.cache,
        baselines=args.baselines,
        layout=args.layout,
        progress=not args.quiet,
    )


#: KIND -> (declare its options, run it and return the JSON-able report).
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[..., Any]]] = {
    "step": (_step_arguments, _run_step),
    "baselines": (_baselines_arguments, _run_baselines),
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks: speed (fod bench step), feature baselines (fod bench baselines)",
        description="Benchmarks of speed and of what the features alone achieve.",
    )
    kinds = parser.add_subparsers(dest="bench", metavar="KIND", required=True)
    for kind, help_text in KINDS.items():
        sub = kinds.add_parser(
            kind,
            help=help_text,
            description=_module(kind).__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--json", type=Path, help="write the results as JSON to this file")
        _COMMANDS[kind][0](sub)
    return parser


def run(args: argparse.Namespace) -> int:
    from fod.io import check_writable, write_json
    from fod.report import to_jsonable

    if getattr(args, "json", None):
        check_writable(args.json)  # before the measurements
    module = _module(args.bench)
    report = _COMMANDS[args.bench][1](args)
    print(module.format_table(report))
    if args.json:
        write_json(args.json, to_jsonable(report))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
