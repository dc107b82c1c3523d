"""Training the anomaly segmenter (:mod:`fod.scoring.segmenter`) without a single defect.

The fit images (the ones the transformers trained on) are the good examples; synthetic
anomalies made on them (:func:`fod.data.anomalies.synthetic_anomalies`, a seed apart from the
validation's, which uses the held-out images) are the anomalous ones. Each token's target is
the share of its cell that the anomaly covers. With the context path (an option) the
anomalies may cover up to half the image (:data:`CONTEXT_MAX_AREA`), so that it also learns
large regions, which only the pooled path can see whole; without it, up to the validation's
:data:`fod.data.anomalies.MAX_AREA`. They fall where the validation's do (the config's
``anomaly_placement``: by default only where the image has texture, on the product). The
images are read, changed and passed through the backbone a chunk at a time, so only features
are kept in memory.

>>> segmenter, report = fit_segmenter(backbone, fit_samples, fit_features, holdout, 256)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from fod import distributed
from fod.batches import map_batches
from fod.config import INFERENCE_BATCH_SIZE, FODConfig
from fod.data import Sample, load_batch
from fod.data.anomalies import MAX_AREA, synthetic_anomalies
from fod.errors import TrainingError
from fod.scoring.segmenter import AnomalySegmenter, stack_levels
from fod.training.features import image_features
from fod.training.fit import FitResult

#: Passes over the good and anomalous examples.
EPOCHS = 6
BATCH_SIZE = 32
LR = 1e-3
#: Synthetic anomalies per fit image, and the bounds on their number.
PER_IMAGE = 2
MIN_ANOMALIES, MAX_ANOMALIES = 320, 1024
#: Images read and changed at a time.
CHUNK = 32
#: Seed offset of the segmenter's anomalies (the validation's use the seed itself).
SEED_OFFSET = 104729
#: Largest share of an image a segmenter anomaly covers when the segmenter has the context
#: path (real defects such as MTD's ``uneven`` cover a quarter of the tile on average).
CONTEXT_MAX_AREA = 0.5


def anomaly_count(fit_images: int) -> int:
    """How many synthetic anomalies to train on: PER_IMAGE per fit image, within bounds."""
    return int(min(MAX_ANOMALIES, max(MIN_ANOMALIES, PER_IMAGE * fit_images)))


def finest_grid(features: Sequence[Tensor]) -> tuple[int, int]:
    """The largest (H, W) among the levels' (N, C, H, W) features."""
    return max((int(f.shape[-2]), int(f.shape[-1])) for f in features)


def token_targets(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """(N, H, W): the share of each token's cell covered by the (N, S, S) boolean ``masks``
    (an adaptive average pool)."""
    return F.adaptive_avg_pool2d(masks.float().unsqueeze(1), grid)[:, 0]


@torch.no_grad()
def anomaly_features(
    backbone: torch.nn.Module,
    samples: Sequence[Sample],
    image_size: int,
    count: int,
    grid: tuple[int, int],
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
    max_area: float = MAX_AREA,
    placement: str = "anywhere",
) -> tuple[list[Tensor], Tensor]:
    """Backbone features (one (count, C_l, H_l, W_l) tensor per level) of ``count`` synthetic
    anomalies of at most ``max_area`` of the image, placed by ``placement``
    (:data:`fod.data.anomalies.PLACEMENTS`), anomaly j made on image j mod N of ``samples``,
    and their (count, H, W) token targets on ``grid``."""
    if not samples:
        raise ValueError("the segmenter needs at least one good image to make anomalies on")
    device = torch.device(device)
    feats: list[list[Tensor]] = []
    targets = []
    starts = range(0, count, CHUNK)
    for chunk, first in enumerate(
        tqdm(starts, desc="segmenter anomalies", unit="chunk", disable=not progress, leave=False)
    ):
        ids = range(first, min(count, first + CHUNK))
        images = load_batch([samples[j % len(samples)].image for j in ids], image_size)
        chunk_seed = int(np.random.SeedSequence([int(seed), chunk]).generate_state(1)[0])
        changed, masks, _ = synthetic_anomalies(images, len(ids), chunk_seed, max_area, placement)
        feats.append(image_features(backbone, changed, device))
        targets.append(token_targets(masks, grid))
    levels = [torch.cat([f[i] for f in feats]) for i in range(len(feats[0]))]
    return levels, torch.cat(targets)


def _logits(seg: AnomalySegmenter, features: Sequence[Tensor], device: torch.device) -> Tensor:
    return map_batches(seg.logits, features, device=device)[0]


@torch.no_grad()
def _input_statistics(features: Sequence[Tensor], grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and 1 / std of the stacked levels, accumulated in float64 chunks."""
    total = sq = None
    count = 0
    for i in range(0, int(features[0].shape[0]), INFERENCE_BATCH_SIZE):
        x = stack_levels([f[i : i + INFERENCE_BATCH_SIZE] for f in features], grid).double()
        s, s2 = x.sum((0, 2, 3)), (x * x).sum((0, 2, 3))
        total = s if total is None else total + s
        sq = s2 if sq is None else sq + s2
        count += x.shape[0] * x.shape[2] * x.shape[3]
    assert total is not None and sq is not None
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(0.0).sqrt()
    scale = 1.0 / std.clamp_min(1e-6)
    return mean.float().view(1, -1, 1, 1), scale.float().view(1, -1, 1, 1)


def train_segmenter(
    good: Sequence[Tensor],
    anomalous: Sequence[Tensor],
    targets: Tensor,
    holdout: Sequence[Tensor],
    seed: int = 0,
    device: str | torch.device = "cpu",
    epochs: int = EPOCHS,
    progress: bool = False,
    context: bool = False,
) -> tuple[AnomalySegmenter, dict[str, Any]]:
    """An :class:`AnomalySegmenter` (with the context path when ``context``) trained with
    binary cross-entropy on ``good`` features (target 0 everywhere) and ``anomalous`` ones
    (the (N, H, W) ``targets``), then standardised on the ``holdout`` good features. Seeded:
    the same inputs and seed give the same weights on the CPU."""
    device = torch.device(device)
    grid = (int(targets.shape[-2]), int(targets.shape[-1]))
    channels = [int(f.shape[1]) for f in good]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        seg = AnomalySegmenter(channels, *grid, context=context)
    mean, scale = _input_statistics(good, grid)
    seg.input_mean.copy_(mean)
    seg.input_scale.copy_(scale)
    seg.to(device)
    n_good = int(good[0].shape[0])
    n = n_good + int(anomalous[0].shape[0])
    zeros = torch.zeros(n_good, *grid)
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(seg.parameters(), lr=LR)
    losses = []
    for _ in tqdm(range(epochs), desc="segmenter", unit="epoch", disable=not progress):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for first in range(0, n, BATCH_SIZE):
            idx = order[first : first + BATCH_SIZE]
            g, a = idx[idx < n_good], idx[idx >= n_good] - n_good
            x = [
                torch.cat([fg[g], fa[a]]).to(device) for fg, fa in zip(good, anomalous, strict=True)
            ]
            y = torch.cat([zeros[g], targets[a]]).to(device)
            loss = F.binary_cross_entropy_with_logits(seg.logits(x), y)
            if not torch.isfinite(loss):
                raise TrainingError(
                    "the anomaly segmenter's loss became NaN or infinite. Train without it "
                    "(--no-segmenter) or check the images for broken pixels."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    seg.eval()
    held = _logits(seg, holdout, device).double()
    spread = float(held.std()) if held.numel() > 1 else 0.0
    seg.center.fill_(float(held.mean()))
    seg.scale.fill_(spread if spread > 1e-12 else 1.0)
    return seg, {"epochs": epochs, "loss": losses}


def fit_segmenter(
    backbone: torch.nn.Module,
    samples: Sequence[Sample],
    fit_features: Sequence[Tensor],
    holdout_features: Sequence[Tensor],
    image_size: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    context: bool = False,
    placement: str = "anywhere",
) -> tuple[AnomalySegmenter, dict[str, Any]]:
    """The segmenter of a model (with the context path and its larger anomalies when
    ``context``): synthetic anomalies on the fit ``samples`` (whose backbone features are
    ``fit_features``), placed by ``placement``, trained against them, standardised on the
    held-out images. The report gives the anomalies made, their largest area and placement,
    the loss per epoch and the seconds."""
    start = time.perf_counter()
    grid = finest_grid(fit_features)
    count = anomaly_count(len(samples))
    max_area = CONTEXT_MAX_AREA if context else MAX_AREA
    anomalous, targets = anomaly_features(
        backbone,
        samples,
        image_size,
        count,
        grid,
        seed + SEED_OFFSET,
        device,
        progress,
        max_area,
        placement,
    )
    seg, report = train_segmenter(
        fit_features,
        anomalous,
        targets,
        holdout_features,
        seed,
        device,
        progress=progress,
        context=context,
    )
    report.update(
        anomalies=count,
        max_area=max_area,
        placement=placement,
        seconds=time.perf_counter() - start,
    )
    return seg, report


def fit_model_segmenter(
    backbone: torch.nn.Module,
    samples: Sequence[Sample],
    features: Sequence[Tensor],
    result: FitResult,
    config: FODConfig,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[AnomalySegmenter, dict[str, Any]]:
    """:func:`fit_segmenter` for a finished :func:`~fod.training.fit.fit` of ``samples``
    (whose backbone ``features`` it was given): its fit images and held-out features
    (cross-fitted: all folds but the first, and the first; :meth:`FitResult.split`).
    Under torchrun every rank trains one and all keep rank 0's, so a GPU's nondeterminism
    cannot make the ranks' heat maps differ."""
    if result.fit_indices is None:
        raise ValueError("the segmenter needs a fit with held-out images (the calibrated head)")
    fit_idx, held_idx = result.split()
    seg, report = fit_segmenter(
        backbone,
        [samples[int(i)] for i in fit_idx],
        [f[fit_idx] for f in features],
        [f[held_idx] for f in features],
        config.image_size,
        config.seed,
        device,
        progress,
        config.segmenter_context,
        config.anomaly_placement,
    )
    if distributed.context().enabled:
        state = distributed.all_gather_object(seg.to_state())[0]
        seg = AnomalySegmenter.from_state_dict(state).to(device).eval()
    return seg, report


__all__ = [
    "CONTEXT_MAX_AREA",
    "EPOCHS",
    "anomaly_count",
    "anomaly_features",
    "finest_grid",
    "fit_model_segmenter",
    "fit_segmenter",
    "token_targets",
    "train_segmenter",
]
