"""Runs started by ``torchrun``: the process group, each rank's device, and the few collectives
fod needs.

``torchrun`` (PyTorch's launcher and c10d rendezvous) starts one process per device and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address. :func:`setup` joins the
group (gloo on CPU, NCCL on CUDA, one device per local rank); without those variables, or with
one process, it does nothing and every helper here answers as rank 0 of 1, so a plain run never
touches ``torch.distributed``.

Two ways fod spreads work, both deterministic so that a rerun after a failure lands the same
work on the same rank:

- ``fod benchmark``: whole categories, assigned by :func:`balanced_shares` (largest first).
- ``fod train``: one category data-parallel; each rank computes the backbone features of its
  :func:`shard_range` of the images, and :func:`all_gather_rows` gives every rank all of them.

>>> ctx, device = setup("auto")        # under torchrun: rank, world size, cuda:LOCAL_RANK
>>> balanced_shares([50, 10, 30, 20], 2)
[[0, 1], [2, 3]]
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")

#: How long a rank waits in a collective for the others. A rank that finished its categories
#: waits at the final gather for the slowest rank, which may train for many hours, so the
#: default is long; ``FOD_DIST_TIMEOUT_S`` overrides it (seconds).
DEFAULT_TIMEOUT_S = 7 * 24 * 3600
# Set by local_work(): this rank works alone (its own category), though a group exists.
_LOCAL = ContextVar("fod_local_work", default=False)


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the shared outputs (model file, training state, tables)."""
        return self.rank == 0

    def prefix(self) -> str:
        """``"[rank r/w] "`` for log lines of a multi-process run, else empty."""
        return f"[rank {self.rank}/{self.world_size}] " if self.enabled else ""


def launched() -> bool:
    """True when started by torchrun (or any launcher setting the same variables) with more
    than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def context() -> Context:
    """This process's rank and world size; rank 0 of 1 outside an initialised group and
    inside :func:`local_work`."""
    if _LOCAL.get() or not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0") or 0)
    )


def setup(device: str | torch.device = "auto") -> tuple[Context, torch.device]:
    """Join the process group when launched by torchrun; return the context and this rank's
    device.

    ``device`` as for :func:`fod.devices.resolve_device`. Under torchrun with CUDA, each local
    rank takes ``cuda:LOCAL_RANK`` and the backend is NCCL; on CPU it is gloo.
    """
    from fod.config import ConfigError
    from fod.devices import resolve_device

    resolved = resolve_device(device)
    if not launched():
        return context(), resolved
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if resolved.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(
                f"local rank {local_rank} has no GPU of its own ({count} visible); start at "
                f"most {count} processes per node (torchrun --nproc-per-node {count})"
            )
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        seconds = float(os.environ.get("FOD_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
        dist.init_process_group(
            backend="nccl" if resolved.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=seconds),
        )
    return context(), resolved


@contextmanager
def local_work() -> Iterator[None]:
    """Within this block the rank works alone: :func:`context` answers rank 0 of 1, so
    training and feature extraction take no part in collectives (``fod benchmark`` gives
    each rank whole categories)."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def group_context() -> Context:
    """The rank and world size of the process group, even inside :func:`local_work`."""
    token = _LOCAL.set(False)
    try:
        return context()
    finally:
        _LOCAL.reset(token)


def shutdown(wait: bool = True) -> None:
    """Leave the process group (a no-op outside one). After a clean run (``wait``) all ranks
    leave together: a rank that tears its gloo threads down while another still talks to it
    can abort at exit ("terminate called without an active exception"). A failing rank
    leaves at once (its peers may be inside another collective)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            with contextlib.suppress(RuntimeError):  # a peer already failed: leave anyway
                dist.barrier()
        dist.destroy_process_group()


def run_in_group(device: str | torch.device, work: Callable[[Context, torch.device], int]) -> int:
    """``work(context, device)`` inside the process group (joined by :func:`setup`), then leave
    it: after a clean run all ranks together, after an exception at once (the peers may be
    inside another collective, and torchrun stops them). Outside torchrun: just ``work``."""
    ctx, resolved = setup(device)
    try:
        code = work(ctx, resolved)
    except BaseException:
        shutdown(wait=False)
        raise
    shutdown()
    return code


def exit_process(code: int) -> NoReturn:
    """End the process with ``code``; a torchrun rank ends without interpreter finalization.

    After :func:`shutdown` every output is written and closed, but the gloo backend's C++
    threads and the objects they hold can still be torn down during Python's finalization,
    which now and then aborts a rank that had finished cleanly ("terminate called without an
    active exception", exit -6, and torchrun reports the whole run as failed). A rank started
    by torchrun therefore flushes its streams and leaves with ``os._exit``; a plain run exits
    as usual.
    """
    if not launched():
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(int(code) & 0xFF)


def _comm_device() -> torch.device:
    """Where tensors for collectives must live: this rank's GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----------------------------------------------------------------------------- work split


def balanced_shares(sizes: Sequence[float], world_size: int) -> list[list[int]]:
    """Indices of ``sizes`` for each rank: largest first, each to the least-loaded rank.

    Ties go to the lower index and the lower rank, so the split depends only on the sizes and
    the world size (every rank computes the same one, and a rerun repeats it).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    order = sorted(range(len(sizes)), key=lambda i: (-float(sizes[i]), i))
    shares: list[list[int]] = [[] for _ in range(world_size)]
    loads = [0.0] * world_size
    for i in order:
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shares[rank].append(i)
        loads[rank] += float(sizes[i])
    return shares


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` items (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


# ------------------------------------------------------------------------------ collectives


def barrier() -> None:
    if context().enabled:
        dist.barrier()


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    ctx = context()
    if not ctx.enabled:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_gather_rows(tensor: Tensor) -> Tensor:
    """Every rank's rows of ``tensor`` (same shape after dim 0), concatenated in rank order.

    Shards may differ in length; they are padded to the longest for the collective.
    """
    ctx = context()
    if not ctx.enabled:
        return tensor
    device = _comm_device()
    count = torch.tensor([tensor.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor.to(device)
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:k] for p, k in zip(parts, sizes, strict=True)]).to(tensor.device)


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64)."""
    if not context().enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only, its result given to every rank.

    An exception on rank 0 is raised on every rank (same type when it can be rebuilt from its
    message), so no rank is left waiting in a later collective.
    """
    ctx = context()
    if not ctx.enabled:
        return fn()
    box: list[Any] = [None]
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:
            box[0] = ("error", exc)
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


__all__ = [
    "Context",
    "all_gather_object",
    "all_gather_rows",
    "all_reduce_sum",
    "balanced_shares",
    "barrier",
    "context",
    "exit_process",
    "group_context",
    "launched",
    "local_work",
    "on_main",
    "run_in_group",
    "setup",
    "shard_range",
    "shutdown",
]
