"""Atomic file writes: a crash or Ctrl-C never leaves a half-written result behind.

Every file the package writes (checkpoints, feature caches, tables, images) goes through
these helpers, which write to a temporary file in the same folder and rename it into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_tensors(path: str | Path, obj: Any) -> Path:
    """Save plain data (tensors, numbers, strings, lists, dicts) loadable with weights_only."""
    return atomic_write(path, lambda p: torch.save(obj, p))


def load_tensors(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`save_tensors` without executing any pickled code."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def stamp_problem(data: Any, fmt: str, version: int) -> str | None:
    """Why ``data`` (read by :func:`load_tensors`) is not a payload stamped ``{"format": fmt,
    "version": version}``: ``"format"`` (not a dict with that marker), ``"version"`` (that
    marker, another version), or None when it is. Each reader words its own refusal."""
    if not isinstance(data, dict) or data.get("format") != fmt:
        return "format"
    if data.get("version") != version:
        return "version"
    return None
