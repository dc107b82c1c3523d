"""map_batches: the same numbers as one call over everything, for any batch size."""

from __future__ import annotations

import pytest
import torch

from fod.batches import map_batches


def test_batches_concatenate_to_one_call() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(11, 3, generator=gen), torch.randn(11, 2, 2, generator=gen)

    def fn(batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return x.sum(1) * y.flatten(1).mean(1), x * 2

    whole = fn([a, b])
    for size in (1, 3, 11, 50):
        out = map_batches(fn, [a, b], batch_size=size)
        assert len(out) == 2 and all(not t.requires_grad for t in out)
        assert torch.equal(out[0], whole[0]) and torch.equal(out[1], whole[1])
    single = map_batches(lambda batch: batch[0] + 1, [a], batch_size=4)
    assert len(single) == 1 and torch.equal(single[0], a + 1)


def test_inputs_must_agree_and_exist() -> None:
    with pytest.raises(ValueError, match="differ in their first size: \\[3, 4\\]"):
        map_batches(lambda b: b[0], [torch.zeros(3), torch.zeros(4)])
    with pytest.raises(ValueError, match="at least one input"):
        map_batches(lambda b: b[0], [])
    with pytest.raises(ValueError, match="at least one row"):
        map_batches(lambda b: b[0], [torch.zeros(0, 2)])
