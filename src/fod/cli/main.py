"""``fod`` entry point: one parser built from a registry of subcommand modules.

To add a subcommand, write ``fod/cli/commands/<name>.py`` with

    def add_parser(subparsers) -> argparse.ArgumentParser   # subparsers.add_parser(...)
    def run(args) -> int                                    # the exit code

and append its module name to :data:`COMMANDS`. Every :class:`~fod.errors.FODError` (bad
data, missing weights, a model file for another configuration, an output that cannot be
written, ...) is printed as ``error: <message>`` on stderr with exit code 2, without a
traceback, in the command line's words (flags, not Python arguments); every
:class:`~fod.errors.FODWarning` as one ``warning: <message>`` line. Anything else is a bug and
keeps its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """fod's own warnings as ``warning: <message>``, without Python's source line."""
    from fod.errors import FODWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, FODWarning):
            print(f"warning: {message}", file=sys.stderr if file is None else file)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fod`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    from fod.errors import FODError

    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        with _one_line_warnings():
            return int(args._run(args) or 0)
    except FODError as exc:
        print(f"error: {exc.cli_message()}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> None:
    """The console script and ``python -m fod``: :func:`main`, then its exit code (a torchrun
    rank leaves through :func:`fod.distributed.exit_process`)."""
    from fod.distributed import exit_process

    exit_process(main())


if __name__ == "__main__":
    entry()
