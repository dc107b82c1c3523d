"""``fod`` entry point: one parser built from a registry of subcommand modules.

To add a subcommand, write ``fod/cli/commands/<name>.py`` with

    def add_parser(subparsers) -> argparse.ArgumentParser   # subparsers.add_parser(...)
    def run(args) -> int                                    # the exit code

and append its module name to :data:`COMMANDS`. Every :class:`~fod.errors.FODError` (bad
data, missing weights, a model file for another configuration, ...) is printed as
``error: <message>`` on stderr with exit code 2, without a traceback; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fod._version import __version__
from fod.cli.common import EXIT_ERROR, EXIT_INTERRUPTED

#: Subcommand modules, in the order ``fod --help`` lists them.
COMMANDS: list[str] = [
    "fod.cli.commands.demo",
    "fod.cli.commands.train",
    "fod.cli.commands.test",
    "fod.cli.commands.predict",
    "fod.cli.commands.benchmark",
    "fod.cli.commands.generate",
    "fod.cli.commands.ablate",
    "fod.cli.commands.bench",
    "fod.cli.commands.export",
]


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``fod`` parser with one subparser per module of ``commands`` (default
    :data:`COMMANDS`); each subparser remembers its module's ``run``."""
    parser = argparse.ArgumentParser(
        prog="fod",
        description=(
            "Focus the Discrepancy (ICCV 2023): train an anomaly detector on photos of good "
            "parts only, then score new images and get heat maps."
        ),
        epilog="Run `fod COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"fod {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS if commands is None else commands:
        module = importlib.import_module(name)
        sub = module.add_parser(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fod`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    from fod.errors import FODError

    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        return int(args._run(args) or 0)
    except FODError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
