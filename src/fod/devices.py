"""Turning a device name ("auto", "cpu", "cuda:1") into a torch.device, with a clear refusal.

Its own module because the API, the command line and the torchrun setup all resolve devices,
and the last must not import the API that sits above it.
"""

from __future__ import annotations

import torch

from fod.config import ConfigError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" -> CUDA when available, else CPU; a requested CUDA device must exist."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} requested but CUDA is not available here; use --device cpu "
            "(or auto)"
        )
    return dev


__all__ = ["resolve_device"]
