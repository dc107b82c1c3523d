"""User-facing errors. The CLI prints their message (which names the file or value and the
fix) instead of a traceback; anything else is a bug and keeps its traceback.

A fix that is spelled differently in Python and on the command line (``require_masks=False``
against ``--allow-missing-masks``) is written with :func:`option`; ``str(error)`` gives the
Python spelling and :meth:`FODError.cli_message` the command-line one, so every message speaks
the words of the interface that raised it.
"""

from __future__ import annotations

import re

_OPTION = re.compile("\x1e(.*?)\x1f(.*?)\x1d", re.DOTALL)


def option(api: str, cli: str) -> str:
    """A fix in both spellings: ``api`` (Python) and ``cli`` (command line, may be empty)."""
    return f"\x1e{api}\x1f{cli}\x1d"


def render(text: str, cli: bool) -> str:
    """``text`` with every :func:`option` in one interface's spelling."""
    return _OPTION.sub(lambda m: m.group(2) if cli else m.group(1), text)


class FODError(Exception):
    """Base of every error caused by the user's input or environment."""

    def __str__(self) -> str:
        return render(super().__str__(), cli=False)

    def cli_message(self) -> str:
        """The message in the command line's words (flags instead of Python arguments)."""
        return render(super().__str__(), cli=True)


class DataError(FODError, ValueError):
    """An image, mask or data folder that cannot be used as it is."""


class BackboneError(FODError, RuntimeError):
    """A backbone that is unknown or whose weights are missing or do not fit."""


class CheckpointError(FODError, ValueError):
    """A model file that is unreadable or was made for another configuration."""


class MetricError(FODError, ValueError):
    """A metric that is undefined for the given labels (e.g. AUROC without anomalies)."""


class OutputError(FODError):
    """An output that cannot be written (no permission, no space, a file where a folder must
    be), or that would overwrite one of the inputs."""


class TrainingError(FODError, RuntimeError):
    """Training that cannot give a usable model, e.g. a loss that became NaN or infinite."""


class FODWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. a damaged cache entry
    that is recomputed); the CLI prints it as one ``warning:`` line."""
