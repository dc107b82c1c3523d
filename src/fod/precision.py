"""Numeric precision of the transformers: fp32, or bf16 / fp16 autocast.

Mixed precision runs the transformers' linear layers and attention products in a 16-bit type
(``torch.autocast``) while the fused correlation kernel (:mod:`fod.model.correlation`) keeps its
softmax, logarithms and row reductions in float32: Div and Ent take logarithms of attention
weights down to 1e-4, which bf16's 8-bit mantissa and fp16's range would distort. fp16 also
scales the loss (``torch.amp.GradScaler``) so that small gradients do not flush to zero; bf16 has
float32's range and needs no scaling. Precision is a runtime choice, not part of a model: a model
trained in bf16 is stored in float32 and scores in any precision.

>>> with autocast(torch.device("cpu"), "bf16"):
...     y = torch.nn.Linear(4, 4)(torch.randn(2, 4))   # y.dtype == torch.bfloat16
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from fod.config import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    """The precision name, or a ConfigError naming the choices."""
    name = str(precision).strip().lower()
    if name not in PRECISIONS:
        raise ConfigError(
            f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)} "
            "(--precision fp32|bf16|fp16)"
        )
    return name


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast region of ``precision`` on ``device`` (nothing for fp32)."""
    name = check_precision(precision)
    if name == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[name])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 training, None otherwise."""
    if check_precision(precision) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


__all__ = ["PRECISIONS", "autocast", "check_precision", "grad_scaler"]
