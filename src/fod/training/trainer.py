"""The training loop: one FOD transformer per level, one Adam, interruption-safe.

Spec section 5: Adam over all levels' parameters, the objective's single backward per level
(summed over levels), one optimiser step per batch. Every source of randomness is seeded: the
weights by ``torch.manual_seed(seed)`` before the models are built, the order of the images in
epoch ``e`` by a generator seeded with ``seed + e``. So a run is a function of its config and
its features, and a run resumed from the state saved after any epoch continues exactly as if
it had never stopped (the state holds the weights, Adam's moments and the history).

Under torchrun (:mod:`fod.distributed`) the same loop runs data-parallel: every rank holds all
features, takes its contiguous share of each batch of the seeded epoch order, and
DistributedDataParallel averages the gradients. Each rank's loss is weighted by its share of the
batch, so the averaged gradient is the gradient of the whole batch's mean loss and the weights
match a one-process run with the same ``batch_size`` (the global batch). Nothing in the state
depends on the number of processes, so a run may resume with another world size. Rank 0 alone
writes the state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fod import distributed
from fod.config import SIGNATURE_KEYS, TRAINING_KEYS, FODConfig, legacy_config
from fod.errors import CheckpointError, DataError, TrainingError, option
from fod.io import UnsafeFileError, load_tensors, save_tensors, stamp_problem
from fod.model import FODTransformer, LevelSpec, coreset_reference, fod_objective, mean_reference
from fod.precision import autocast, check_precision, grad_scaler
from fod.training.finite import lower_lr_hint, nonfinite

STATE_FORMAT = "fod-train-state"
STATE_VERSION = 1


@dataclass
class TrainResult:
    """The trained models (eval mode, on the training device) and one history entry per epoch."""

    models: list[FODTransformer]
    history: list[dict[str, Any]] = field(default_factory=list)


def _check_features(config: FODConfig, features: Sequence[Tensor]) -> int:
    if not features:
        raise DataError("no feature levels given to train on")
    config.check_levels(len(features))
    counts = {int(f.shape[0]) for f in features}
    if len(counts) != 1 or any(f.dim() != 4 for f in features):
        shapes = [tuple(f.shape) for f in features]
        raise DataError(f"feature levels must be (N, C, H, W) with one N; got {shapes}")
    n = counts.pop()
    if n == 0:
        raise DataError("no training images: the feature tensors are empty")
    return n


def level_spec(config: FODConfig, level: int, features: Tensor) -> LevelSpec:
    """The sizes of level ``level``'s transformer for features of shape (N, C, H, W)."""
    _, c, h, w = features.shape
    return LevelSpec(
        channels=int(c),
        height=int(h),
        width=int(w),
        d_model=config.d_model[level],
        heads=config.heads,
        layers=config.num_layers,
        ffn_ratio=config.ffn_ratio,
    )


def reference_for(config: FODConfig, features: Tensor) -> Tensor:
    """The inter branch's reference features of one level (spec section 3)."""
    variant = config.variant
    if variant.reference == "coreset":
        if variant.coreset_size > features.shape[0]:
            raise DataError(
                f"a coreset of {variant.coreset_size} maps needs at least that many training "
                f"images, found {features.shape[0]}; lower "
                f"{option('coreset_size', '--coreset-size')} or add images"
            )
        return coreset_reference(features, variant.coreset_size)
    return mean_reference(features)


def build_models(config: FODConfig, features: Sequence[Tensor]) -> list[FODTransformer]:
    """Seeded construction: the same config and features always give the same weights."""
    _check_features(config, features)
    torch.manual_seed(config.seed)
    models = []
    for level, f in enumerate(features):
        reference = reference_for(config, f) if config.variant.inter else None
        models.append(FODTransformer(level_spec(config, level, f), config.variant, reference))
    return models


def epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    """Order of the n training images in (0-based) ``epoch``, independent of all other state."""
    gen = torch.Generator().manual_seed(int(seed) + int(epoch))
    return torch.randperm(n, generator=gen)


# --------------------------------------------------------------------------------- states


def _state_payload(
    config: FODConfig,
    models: Sequence[FODTransformer],
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, Any]],
    num_images: int,
) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "config": config.to_dict(),
        "epoch": int(epoch),
        "num_images": int(num_images),
        "models": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in models],
        "specs": [m.spec.to_dict() for m in models],
        "optimizer": optimizer.state_dict(),
        "history": history,
    }


def read_state(path: str | Path) -> dict[str, Any]:
    """A training state written by :func:`train`, loaded without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: training state not found; nothing to resume. Start without "
            f"{option('resume=True', '--resume')}."
        )
    try:
        state = load_tensors(path)
    except UnsafeFileError as exc:
        raise CheckpointError(
            f"{path}: this training state contains code or objects that fod does not load "
            f"(pickled Python objects: {', '.join(exc.names[:3])}). Delete it to train from "
            "scratch."
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot read this training state (truncated or not written by fod; "
            f"{type(exc).__name__}). Delete it to train from scratch."
        ) from exc
    problem = stamp_problem(state, STATE_FORMAT, STATE_VERSION)
    if problem == "format":
        raise CheckpointError(
            f"{path}: not a fod training state. Delete it or choose another output path."
        )
    if problem == "version":
        raise CheckpointError(
            f"{path}: training state format version {state.get('version')!r}, this fod reads "
            f"{STATE_VERSION}. Delete it to train from scratch."
        )
    return state


def _check_state(
    path: Path, state: dict[str, Any], config: FODConfig, models: list[FODTransformer], n: int
) -> None:
    """Refuse a state made for another config or other training images."""
    stored = legacy_config(state["config"])
    diff = config.differences(stored, SIGNATURE_KEYS)
    diff.update(config.differences(stored, [k for k in TRAINING_KEYS if k != "epochs"]))
    if diff:
        detail = "; ".join(f"{k}: state {v[1]!r}, now {v[0]!r}" for k, v in diff.items())
        raise CheckpointError(
            f"{path}: this training state was made with another configuration ({detail}). "
            "Resume with the same settings, or delete the state to start over."
        )
    if int(state.get("num_images", -1)) != n or len(state["models"]) != len(models):
        raise CheckpointError(
            f"{path}: this training state was made on {state.get('num_images')} training "
            f"images, now there are {n}. Resume on the same data, or delete the state."
        )
    for level, (model, sd) in enumerate(zip(models, state["models"], strict=True)):
        if "reference" in sd:
            ours = model.reference
            if ours.shape != sd["reference"].shape or not torch.allclose(
                ours.cpu(), sd["reference"].float(), rtol=1e-4, atol=1e-5
            ):
                raise CheckpointError(
                    f"{path}: the training images differ from those the state was made on "
                    f"(level {level} reference features). Resume on the same data, or delete "
                    "the state."
                )


# --------------------------------------------------------------------------------- training


class _Means:
    """Batch-size-weighted running means of logged loss terms."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weight = 0

    def add(self, terms: dict[str, float], weight: int) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight
        self.weight += weight

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.weight) for k, v in self.sums.items()}

    def reduce(self) -> None:
        """Sum the running sums over the ranks of a distributed run (a no-op otherwise)."""
        keys = sorted(self.sums)
        totals = distributed.all_reduce_sum([*(self.sums[k] for k in keys), self.weight])
        self.sums = dict(zip(keys, totals[:-1], strict=True))
        self.weight = round(totals[-1])


def _local_batch(idx: Tensor, ctx: distributed.Context) -> tuple[Tensor, int, float]:
    """This rank's rows of the global batch ``idx``, how many count, and its loss weight.

    The weight ``world * rows / len(idx)`` makes DDP's gradient average equal the gradient of
    the whole batch's mean loss. A rank left without rows (a last batch smaller than the world)
    still runs one row with weight 0, since every rank must take part in each backward pass.
    """
    if not ctx.enabled:
        return idx, len(idx), 1.0
    share = distributed.shard_range(len(idx), ctx.rank, ctx.world_size)
    part = idx[share.start : share.stop]
    if len(part) == 0:
        return idx[:1], 0, 0.0
    return part, len(part), ctx.world_size * len(part) / len(idx)


def _data_parallel(models: list[FODTransformer], device: torch.device) -> list[torch.nn.Module]:
    """Each level wrapped in DistributedDataParallel (the models themselves, in one process)."""
    if not distributed.context().enabled:
        return list(models)
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return [DistributedDataParallel(m, device_ids=ids) for m in models]


def _diverged(
    what: str, config: FODConfig, state_path: Path | None, epoch: int, first: int, n: int
) -> TrainingError:
    steps = math.ceil(n / config.batch_size)
    step = first // config.batch_size + 1
    kept = ""
    if state_path is not None and state_path.exists():
        kept = (
            f" The state of the last finished epoch is in {state_path}; delete it to start over "
            "with other settings."
        )
    return TrainingError(
        f"training diverged at epoch {epoch + 1}, step {step} of {steps}: {what}. "
        f"{lower_lr_hint(config.lr)} No model was written.{kept}"
    )


def _check_loss(
    loss: Tensor,
    config: FODConfig,
    state_path: Path | None,
    epoch: int,
    first: int,
    n: int,
    level: int,
) -> None:
    if not bool(torch.isfinite(loss.detach())):
        what = f"the loss of level {level} became {float(loss):g}"
        raise _diverged(what, config, state_path, epoch, first, n)


def _check_weights(
    models: Sequence[FODTransformer],
    config: FODConfig,
    state_path: Path | None,
    epoch: int,
    first: int,
    n: int,
) -> None:
    flags = [torch.isfinite(p.detach()).all() for m in models for p in m.parameters()]
    if bool(torch.stack(flags).all()):  # one device sync per step
        return
    bad = nonfinite(
        (f"level {i} {name}", p.detach())
        for i, m in enumerate(models)
        for name, p in m.named_parameters()
    )
    if bad:
        what = f"parameters became NaN or infinite ({', '.join(bad[:2])})"
        raise _diverged(what, config, state_path, epoch, first, n)


def train(
    config: FODConfig,
    features: Sequence[Tensor],
    state_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> TrainResult:
    """Train one FOD transformer per feature level on ``features`` (one (N, C, H, W) each).

    With ``state_path`` the state after every epoch is written there atomically; with
    ``resume=True`` training continues from it (refused when it was made for another
    configuration or other images). History entries hold, per epoch, the mean of each loss
    term over the level-averaged batches, the same per level under ``"levels"``, and seconds.
    ``precision``: fp32, or bf16 / fp16 autocast of the transformers (:mod:`fod.precision`).
    Under torchrun every rank passes the same (all) features; see the module notes.
    """
    n = _check_features(config, features)
    device = torch.device(device)
    precision = check_precision(precision)
    ctx = distributed.context()
    models = build_models(config, features)
    for m in models:
        m.to(device)
    params = [p for m in models for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    history: list[dict[str, Any]] = []
    start = 0
    state_path = Path(state_path) if state_path is not None else None

    if resume:
        if state_path is None:
            raise ValueError("resume=True needs a state_path")
        path = state_path
        state = distributed.on_main(lambda: read_state(path))
        _check_state(state_path, state, config, models, n)
        try:
            for model, sd in zip(models, state["models"], strict=True):
                model.load_state_dict(sd)
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"{state_path}: the training state does not fit the models ({exc}). "
                "Delete it to train from scratch."
            ) from exc
        start = int(state["epoch"])
        if start > config.epochs:
            raise CheckpointError(
                f"{state_path}: this training state has {start} finished epochs, more than the "
                f"{config.epochs} asked for. Pass {option('epochs', '--epochs')} {start} or "
                "more, or delete the state."
            )
        history = list(state.get("history", []))

    steps_per_epoch = math.ceil(n / config.batch_size)
    bar = tqdm(
        total=steps_per_epoch * config.epochs,
        initial=steps_per_epoch * min(start, config.epochs),
        desc="train",
        unit="step",
        disable=not (progress and ctx.is_main),
        dynamic_ncols=True,
    )
    replicas = _data_parallel(models, device)
    scaler = grad_scaler(device, precision)
    try:
        for epoch in range(start, config.epochs):
            for m in models:
                m.train()
            t0 = time.perf_counter()
            per_level = [_Means() for _ in models]
            overall = _Means()
            order = epoch_order(config.seed, epoch, n)
            for first in range(0, n, config.batch_size):
                idx, rows, weight = _local_batch(order[first : first + config.batch_size], ctx)
                optimizer.zero_grad(set_to_none=True)
                batch_terms: list[dict[str, float]] = []
                for model, feats, means in zip(replicas, features, per_level, strict=True):
                    x = feats[idx].to(device, non_blocking=True)
                    with autocast(device, precision):
                        out = model(x)
                    terms = fod_objective(out, config.variant, config.lambda1, config.lambda2)
                    loss = terms.total if weight == 1.0 else terms.total * weight
                    if scaler is None and not ctx.enabled:  # else: the weights check below
                        _check_loss(
                            terms.total, config, state_path, epoch, first, n, len(batch_terms)
                        )
                    (loss if scaler is None else scaler.scale(loss)).backward()
                    logged = terms.as_dict()
                    means.add(logged, rows)
                    batch_terms.append(logged)
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                _check_weights(models, config, state_path, epoch, first, n)
                avg = {k: sum(t[k] for t in batch_terms) / len(batch_terms) for k in batch_terms[0]}
                overall.add(avg, rows)
                running = overall.means()
                bar.set_postfix(
                    epoch=f"{epoch + 1}/{config.epochs}",
                    loss1=f"{running['loss1']:.4f}",
                    loss2=f"{running['loss2']:.4f}",
                    rec=f"{running['rec']:.4f}",
                    refresh=False,
                )
                bar.update(1)
            if ctx.enabled:
                for means in (overall, *per_level):
                    means.reduce()
            entry: dict[str, Any] = {"epoch": epoch + 1, **overall.means()}
            entry["seconds"] = time.perf_counter() - t0
            entry["levels"] = [m.means() for m in per_level]
            history.append(entry)
            if state_path is not None and ctx.is_main:
                save_tensors(
                    state_path, _state_payload(config, models, optimizer, epoch + 1, history, n)
                )
    finally:
        bar.close()
    for m in models:
        m.eval()
    return TrainResult(models, history)


__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "TrainResult",
    "build_models",
    "epoch_order",
    "level_spec",
    "read_state",
    "reference_for",
    "train",
]
