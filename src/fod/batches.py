"""One function for running a module over many images a batch at a time, without gradients.

Backbone passes, level scores, heat maps and segmenter logits are all computed this way: slice
every input along its first axis, move the slice to the device, run, bring the outputs back to
the CPU and concatenate them. The batch size bounds memory and never changes a number.

>>> maps, scores = map_batches(lambda f: detector.score_features(f), features)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fod.config import INFERENCE_BATCH_SIZE

Outputs = Tensor | Sequence[Tensor]


@torch.no_grad()
def map_batches(
    fn: Callable[[list[Tensor]], Outputs],
    inputs: Sequence[Tensor],
    batch_size: int = INFERENCE_BATCH_SIZE,
    device: str | torch.device = "cpu",
) -> list[Tensor]:
    """``fn`` over ``inputs`` (tensors of equal first size N) in batches of ``batch_size``:
    one (N, ...) CPU tensor per output of ``fn`` (a tensor or a sequence of tensors)."""
    if not inputs:
        raise ValueError("map_batches needs at least one input tensor")
    n = int(inputs[0].shape[0])
    if any(int(t.shape[0]) != n for t in inputs):
        raise ValueError(f"inputs differ in their first size: {[int(t.shape[0]) for t in inputs]}")
    step = max(1, int(batch_size))
    parts: list[list[Tensor]] = []
    for first in range(0, n, step):
        out = fn([t[first : first + step].to(device) for t in inputs])
        parts.append([out.cpu()] if isinstance(out, Tensor) else [o.cpu() for o in out])
    if not parts:
        raise ValueError("map_batches needs at least one row to run on")
    return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]


__all__ = ["map_batches"]
