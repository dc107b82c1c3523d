"""Backbone features of a set of images, computed once (spec section 5: no augmentation).

FOD trains on frozen-backbone features of the same images every epoch, so the backbone runs
once per image and the training loop only sees tensors. :class:`FeatureCache` keeps those
tensors on disk, keyed by the backbone, the image size and the files' (path, size, mtime), so
a second run on the same data (another variant, more epochs, a benchmark resumed) skips the
backbone entirely, and any change to an image or the backbone gives a new key.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fod import distributed
from fod.backbone import FeatureExtractor
from fod.batches import map_batches
from fod.config import INFERENCE_BATCH_SIZE
from fod.data import ImageDataset, Sample
from fod.errors import DataError, FODWarning
from fod.io import UnsafeFileError, load_tensors, save_tensors, stamp_problem

CACHE_FORMAT = "fod-features"
CACHE_VERSION = 1


def _images_only(batch: list[dict[str, Any]]) -> Tensor:
    return torch.stack([item["image"] for item in batch])


@torch.no_grad()
def extract_features(
    backbone: FeatureExtractor,
    samples: Sequence[Sample],
    image_size: int,
    batch_size: int = INFERENCE_BATCH_SIZE,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[Tensor]:
    """One ``(N, C_l, H_l, W_l)`` float32 CPU tensor per level, in the order of ``samples``.

    The backbone is moved to ``device``; images are read with :class:`fod.data.ImageDataset`
    (resized to ``image_size``) in the main process, since reading is cheap next to the
    backbone and worker processes are fragile on laptops and notebooks.
    """
    if len(samples) == 0:
        raise DataError("no training images to compute features of")
    backbone.to(device)
    loader = DataLoader(
        ImageDataset(samples, image_size),
        batch_size=max(1, int(batch_size)),
        shuffle=False,
        num_workers=0,
        collate_fn=_images_only,
    )
    levels: list[list[Tensor]] = []
    for images in tqdm(loader, desc="features", unit="batch", disable=not progress, leave=False):
        maps = backbone(images.to(device))
        if not levels:
            levels = [[] for _ in maps]
        for store, m in zip(levels, maps, strict=True):
            store.append(m.float().cpu())
    return [torch.cat(parts) for parts in levels]


def image_features(
    backbone: torch.nn.Module, images: Tensor, device: str | torch.device = "cpu"
) -> list[Tensor]:
    """Backbone features of ``images`` (N, 3, S, S) already in memory (synthetic anomalies),
    batch by batch: one (N, C_l, H_l, W_l) CPU tensor per level."""
    return map_batches(lambda batch: backbone(batch[0]), [images], device=device)


def _file_entry(path: Path) -> list[Any]:
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the image file ({exc})") from exc
    return [str(path.resolve()), int(st.st_size), int(st.st_mtime_ns)]


def feature_key(
    backbone: FeatureExtractor | dict[str, Any], samples: Sequence[Sample], image_size: int
) -> str:
    """Hex digest of (backbone description, image size, each file's path, size and mtime)."""
    describe = backbone.describe() if isinstance(backbone, FeatureExtractor) else backbone
    payload = {
        "format": CACHE_VERSION,
        "backbone": describe,
        "image_size": int(image_size),
        "files": [_file_entry(Path(s.image)) for s in samples],
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class FeatureCache:
    """Folder of feature files ``<key>.pt``; entries are written atomically and read with
    ``weights_only`` loading, so a cache file can never run code."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str, count: int | None = None) -> list[Tensor] | None:
        """The cached levels, or None when missing or unreadable (then recomputed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = load_tensors(path)
            ok = (
                stamp_problem(data, CACHE_FORMAT, CACHE_VERSION) is None
                and isinstance(data.get("levels"), list)
                and all(isinstance(t, Tensor) for t in data["levels"])
            )
            why = "not a fod feature file"
        except UnsafeFileError:
            ok, why = False, "it contains code or objects that fod does not load"
        except Exception as exc:  # a truncated or foreign file: recompute, never fail
            ok, why = False, f"unreadable, damaged or truncated ({type(exc).__name__})"
        if ok and count is not None and any(t.shape[0] != count for t in data["levels"]):
            ok, why = False, "made for another number of images"
        if not ok:
            warnings.warn(
                f"ignoring the feature cache entry {path} ({why}); computing the features again",
                FODWarning,
                stacklevel=2,
            )
            return None
        return list(data["levels"])

    def save(self, key: str, levels: Sequence[Tensor], info: dict[str, Any] | None = None) -> Path:
        payload = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "levels": [t.detach().float().cpu().contiguous() for t in levels],
            "info": dict(info or {}),
        }
        return save_tensors(self.path(key), payload)

    def features(
        self,
        backbone: FeatureExtractor,
        samples: Sequence[Sample],
        image_size: int,
        batch_size: int = INFERENCE_BATCH_SIZE,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> list[Tensor]:
        """Cached features of ``samples``, computing and storing them on a miss."""
        key = feature_key(backbone, samples, image_size)
        cached = self.load(key, count=len(samples))
        if cached is not None:
            return cached
        levels = extract_features(backbone, samples, image_size, batch_size, device, progress)
        info = {"backbone": backbone.describe(), "image_size": int(image_size)}
        info["images"] = len(samples)
        self.save(key, levels, info)
        return levels


def gathered_features(
    backbone: FeatureExtractor,
    samples: Sequence[Sample],
    image_size: int,
    batch_size: int = INFERENCE_BATCH_SIZE,
    device: str | torch.device = "cpu",
    progress: bool = True,
    cache: FeatureCache | None = None,
) -> list[Tensor]:
    """Features of all ``samples`` on every rank of a torchrun job, each rank running the
    backbone on its contiguous share only (rank 0 stores them in ``cache``).

    Every rank keeps all features, not just its share: the inter branch's reference is a mean
    (or coreset) over all training images, the threshold is the maximum over all of their
    scores, and the seeded epoch order draws each batch from the whole set. The features are
    small next to the backbone's work (a few MB per hundred images at the default sizes), so
    one all-gather costs little. Outside torchrun this is :meth:`FeatureCache.features` or
    :func:`extract_features`.
    """
    ctx = distributed.context()
    if not ctx.enabled:
        if cache is not None:
            return cache.features(backbone, samples, image_size, batch_size, device, progress)
        return extract_features(backbone, samples, image_size, batch_size, device, progress)
    key = feature_key(backbone, samples, image_size) if cache is not None else None
    cached = cache.load(key, count=len(samples)) if cache is not None and key else None
    if distributed.all_reduce_sum([cached is not None])[0] == ctx.world_size:
        return cached  # every rank read the same cache file
    if len(samples) < ctx.world_size:
        raise DataError(
            f"{len(samples)} training images cannot be shared among {ctx.world_size} "
            f"processes; start at most {len(samples)} (torchrun --nproc-per-node)"
        )
    share = [samples[i] for i in distributed.shard_range(len(samples), ctx.rank, ctx.world_size)]
    local = extract_features(backbone, share, image_size, batch_size, device, progress)
    levels = [distributed.all_gather_rows(t) for t in local]
    if cache is not None and key and ctx.is_main:
        info = {"backbone": backbone.describe(), "image_size": int(image_size)}
        cache.save(key, levels, {**info, "images": len(samples)})
    return levels


__all__ = ["FeatureCache", "extract_features", "feature_key", "gathered_features", "image_features"]
