"""The whole scorer as one module: images -> heat maps and image scores.

``Detector`` chains the frozen backbone, the per-level FOD transformers, their token scores
(the paper's, spec section 6, or a :class:`~fod.scoring.head.CalibratedHead` per level), the
upsampled average and the blurred maximum (with calibrated heads, the mean of the blurred
maxima under the heads' weightings of levels and parts, see :func:`fuse_levels`), plus an
:class:`~fod.scoring.segmenter.AnomalySegmenter`'s map in the heat map when the model has
one. It is a plain ``nn.Module`` with a tensor-only forward, so the same object scores a test
set, serves the Python API and is what gets exported.

>>> maps, scores = Detector(backbone, levels, image_size=256)(images)   # images in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fod.backbone import FeatureExtractor
from fod.batches import map_batches
from fod.config import INFERENCE_BATCH_SIZE
from fod.data import ImageDataset, Sample
from fod.model import FODOutput, FODTransformer
from fod.model.scores import score_branches
from fod.scoring.anomaly_map import (
    DEFAULT_SIGMA,
    anomaly_map,
    blurred_upsample,
    image_scores,
)
from fod.scoring.head import CalibratedHead
from fod.scoring.segmenter import AnomalySegmenter


def head_scores(model: FODTransformer, head: CalibratedHead, features: Tensor) -> Tensor:
    """(B, P, H, W) standardised part scores of a calibrated head; the transformer runs only
    when a part needs its output."""
    if head.needs_model:
        branches = score_branches(model.variant) if "paper" in head.parts else frozenset()
        output = model(features, div_branches=branches, entropy=False)
    else:
        tokens = features.flatten(2).transpose(1, 2)
        output = FODOutput(tokens, tokens)
    return head.standardised(output)


def level_scores(
    levels: Sequence[FODTransformer],
    features: Sequence[Tensor],
    heads: Sequence[CalibratedHead] | None = None,
) -> list[Tensor]:
    """Token scores of each level for its (B, C_l, H_l, W_l) features: the paper's, (B, H_l,
    W_l), when ``heads`` is None, else each calibrated head's standardised parts, (B, P, H_l,
    W_l)."""
    if len(levels) != len(features):
        raise ValueError(f"{len(levels)} level models but {len(features)} feature levels")
    if heads is None:
        return [model.score(f) for model, f in zip(levels, features, strict=True)]
    if len(heads) != len(levels):
        raise ValueError(f"{len(heads)} heads for {len(levels)} levels")
    return [
        head_scores(model, head, f) for model, head, f in zip(levels, heads, features, strict=True)
    ]


def fuse_levels(
    scores: Sequence[Tensor],
    size: int,
    sigma: float = DEFAULT_SIGMA,
    heads: Sequence[CalibratedHead] | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`level_scores` -> (maps (B, S, S), image scores (B,)). The map is the levels' mean
    (of the parts' sum, with heads); the image score is the blurred maximum of the map, or with
    heads :func:`weighted_image_scores` under the heads' ``image_weight``."""
    if heads is None:
        maps = anomaly_map(scores, size)
        return maps, image_scores(maps, sigma)
    maps = anomaly_map([z.sum(dim=1) for z in scores], size)
    return maps, weighted_image_scores(scores, [h.image_weight for h in heads], size, sigma)


def score_levels(
    levels: Sequence[FODTransformer],
    features: Sequence[Tensor],
    size: int,
    sigma: float = DEFAULT_SIGMA,
    heads: Sequence[CalibratedHead] | None = None,
    segmenter: AnomalySegmenter | None = None,
    token_scores: Sequence[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Backbone features -> (maps (B, S, S), image scores (B,)): :func:`fuse_levels` of the
    levels' token scores, plus the segmenter's upsampled map when there is one (the heat map
    only: the image score stays the heads'). ``token_scores``: the :func:`level_scores` of
    ``features`` when they are at hand, so the transformers and heads need not run again."""
    if token_scores is None:
        token_scores = level_scores(levels, features, heads)
    maps, scores = fuse_levels(token_scores, size, sigma, heads)
    if segmenter is not None:
        maps = maps + anomaly_map([segmenter(features)], size)
    return maps, scores


def weighting_maxima(
    scores: Sequence[Tensor],
    image_weights: Sequence[Tensor],
    size: int,
    sigma: float = DEFAULT_SIGMA,
) -> Tensor:
    """(B, K) blurred maxima of standardised part scores (one (B, P, H_l, W_l) per level)
    under K weightings (one (K, P), or (P,) for K = 1, per level): for each k, the maximum
    of the blurred level mean of each level's parts weighted by row k.

    Upsampling and blurring are linear, so each level's parts are upsampled and blurred once
    (:func:`~fod.scoring.anomaly_map.blurred_upsample`) and every weighting is a weighted sum
    of those maps before its maximum."""
    if len(scores) != len(image_weights):
        raise ValueError(f"{len(image_weights)} image weights for {len(scores)} levels")
    levels = len(scores)
    # a part that no weighting uses (a heat-map part, a level weighed 0) is neither upsampled
    # nor blurred: the weights are fixed buffers, so a traced graph keeps this choice
    rows = [w.reshape(-1, z.shape[1]) for w, z in zip(image_weights, scores, strict=True)]
    used = [[p for p in range(w.shape[1]) if bool(w[:, p].ne(0).any())] for w in rows]
    if not any(used):
        used = [list(range(w.shape[1])) for w in rows]
    kept = [(z[:, u], w[:, u]) for z, w, u in zip(scores, rows, used, strict=True) if u]
    # (B, parts used, S, S): each level's used parts, upsampled and blurred
    maps = torch.cat([blurred_upsample(z, size, sigma) for z, _ in kept], dim=1)
    weights = torch.cat([w for _, w in kept], dim=1)  # (K, parts used)
    weights = (weights / levels).to(maps.dtype)  # the mean over levels
    return torch.stack(
        [(maps * k.view(1, -1, 1, 1)).sum(1).flatten(1).amax(1) for k in weights], dim=1
    )


def weighted_image_scores(
    scores: Sequence[Tensor],
    image_weights: Sequence[Tensor],
    size: int,
    sigma: float = DEFAULT_SIGMA,
) -> Tensor:
    """(B,) image scores of standardised part scores (one (B, P, H_l, W_l) per level): the
    mean over the K weightings (one (K, P) per level) of :func:`weighting_maxima`."""
    return weighting_maxima(scores, image_weights, size, sigma).mean(dim=1)


class Detector(nn.Module):
    """Backbone + one FOD transformer (and optionally one calibrated head) per level ->
    ``(maps (B, S, S), scores (B,))``.

    Always in eval mode and without gradients: it is for scoring, training works on cached
    features (:mod:`fod.training`).
    """

    def __init__(
        self,
        backbone: FeatureExtractor,
        levels: Sequence[FODTransformer],
        image_size: int,
        sigma: float = DEFAULT_SIGMA,
        heads: Sequence[CalibratedHead] | None = None,
        segmenter: AnomalySegmenter | None = None,
    ) -> None:
        super().__init__()
        if heads is not None and len(heads) != len(levels):
            raise ValueError(f"{len(heads)} heads for {len(levels)} level models")
        if segmenter is not None and segmenter.channels != list(backbone.channels):
            raise ValueError(
                f"the segmenter takes levels of {segmenter.channels} channels, the backbone "
                f"gives {list(backbone.channels)}"
            )
        if len(levels) != len(backbone.channels):
            raise ValueError(
                f"{len(levels)} level models for a backbone with {len(backbone.channels)} levels"
            )
        for i, (model, channels) in enumerate(zip(levels, backbone.channels, strict=True)):
            if model.spec.channels != channels:
                raise ValueError(
                    f"level {i} model expects {model.spec.channels} channels, the backbone "
                    f"gives {channels}"
                )
        self.backbone = backbone
        self.levels = nn.ModuleList(levels)
        self.heads = nn.ModuleList(heads) if heads is not None else None
        self.segmenter = segmenter
        self.image_size = int(image_size)
        self.sigma = float(sigma)
        self.train(False)

    def train(self, mode: bool = True) -> Detector:
        """Stay in eval mode (no dropout or batch statistics may change a score)."""
        return super().train(False)

    @torch.no_grad()
    def score_features(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Backbone features (one (B, C_l, H_l, W_l) per level) -> (maps, scores)."""
        heads = list(self.heads) if self.heads is not None else None
        return score_levels(
            list(self.levels), features, self.image_size, self.sigma, heads, self.segmenter
        )

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images`` (B, 3, S, S) RGB in [0, 1] -> ``maps`` (B, S, S), ``scores`` (B,)."""
        if not torch.jit.is_tracing() and tuple(images.shape[-2:]) != (
            self.image_size,
            self.image_size,
        ):
            raise ValueError(
                f"images must be {self.image_size} x {self.image_size} (the model's image "
                f"size), got {tuple(images.shape)}; resize them, e.g. with fod.data.load_batch"
            )
        return self.score_features(self.backbone(images))


@torch.no_grad()
def score_features(
    levels: Sequence[FODTransformer],
    features: Sequence[Tensor],
    image_size: int,
    batch_size: int = INFERENCE_BATCH_SIZE,
    device: str | torch.device = "cpu",
    sigma: float = DEFAULT_SIGMA,
    heads: Sequence[CalibratedHead] | None = None,
    segmenter: AnomalySegmenter | None = None,
    token_scores: Sequence[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Maps (N, S, S) and scores (N,) of precomputed features, batch by batch, on the CPU.

    Used to calibrate on good images without running the backbone again; ``token_scores``
    (their :func:`level_scores`, as the validation computed them) spares the transformers
    and heads too.
    """
    n = len(features)
    given = list(token_scores) if token_scores is not None else []

    def run(batch: list[Tensor]) -> tuple[Tensor, Tensor]:
        tokens = batch[n:] if given else None
        return score_levels(levels, batch[:n], image_size, sigma, heads, segmenter, tokens)

    maps, scores = map_batches(run, [*features, *given], batch_size, device)
    return maps, scores


@dataclass
class ScoredSet:
    """Scores of a labelled image set, as numpy arrays in the order of its samples."""

    paths: list[str]
    labels: np.ndarray  # (N,) int, 1 = anomalous
    defect_types: list[str]
    scores: np.ndarray  # (N,) float32 image scores
    maps: np.ndarray  # (N, S, S) float32 unblurred heat maps
    masks: np.ndarray  # (N, S, S) bool ground truth (zeros for good images)
    has_mask: np.ndarray  # (N,) bool: False for an anomalous image without a mask file

    def records(self) -> list[dict[str, Any]]:
        """One JSON-able dict per image."""
        return [
            {"path": p, "label": int(y), "defect_type": t, "score": float(s)}
            for p, y, t, s in zip(
                self.paths, self.labels, self.defect_types, self.scores, strict=True
            )
        ]


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([b["mask"] for b in batch]),
        "label": [b["label"] for b in batch],
        "path": [b["path"] for b in batch],
        "defect_type": [b["defect_type"] for b in batch],
        "has_mask": [b["has_mask"] for b in batch],
    }


def score_samples(
    detector: Detector,
    samples: Sequence[Sample],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ScoredSet:
    """Run ``detector`` over labelled samples (read with :class:`fod.data.ImageDataset`)."""
    detector.to(device)
    loader = DataLoader(
        ImageDataset(samples, detector.image_size),
        batch_size=max(1, int(batch_size)),
        shuffle=False,
        num_workers=0,
        collate_fn=_collate,
    )
    out: dict[str, list[Any]] = {k: [] for k in ("maps", "scores", "masks")}
    meta: dict[str, list[Any]] = {k: [] for k in ("label", "path", "defect_type", "has_mask")}
    for batch in tqdm(loader, desc="score", unit="batch", disable=not progress, leave=False):
        maps, scores = detector(batch["image"].to(device))
        out["maps"].append(maps.float().cpu().numpy())
        out["scores"].append(scores.float().cpu().numpy())
        out["masks"].append(batch["mask"][:, 0].numpy() > 0.5)
        for key in meta:
            meta[key].extend(batch[key])
    s = detector.image_size
    return ScoredSet(
        paths=[str(p) for p in meta["path"]],
        labels=np.asarray(meta["label"], dtype=np.int64),
        defect_types=[str(t) for t in meta["defect_type"]],
        scores=np.concatenate(out["scores"]) if out["scores"] else np.zeros(0, np.float32),
        maps=np.concatenate(out["maps"]) if out["maps"] else np.zeros((0, s, s), np.float32),
        masks=np.concatenate(out["masks"]) if out["masks"] else np.zeros((0, s, s), bool),
        has_mask=np.asarray(meta["has_mask"], dtype=bool),
    )


__all__ = [
    "Detector",
    "ScoredSet",
    "fuse_levels",
    "head_scores",
    "level_scores",
    "score_features",
    "score_levels",
    "score_samples",
    "weighted_image_scores",
    "weighting_maxima",
]
