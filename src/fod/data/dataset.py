"""Torch dataset: samples -> resized ``[0, 1]`` RGB tensors and nearest-resized masks.

This is the one place where files become the backbone's input contract, ``(3, H, W)`` float32
RGB in ``[0, 1]``; masks are checked against their image's *original* size before resizing,
because after resizing a mismatch could no longer be seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fod.data.images import as_size, load_image, load_mask, resize_image, resize_mask
from fod.data.layouts import Sample
from fod.errors import DataError

__all__ = ["ImageDataset", "load_batch", "load_masks", "to_tensor"]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


class ImageDataset(Dataset[dict[str, Any]]):
    """Samples as model input, resized to ``image_size`` (``S`` or ``(h, w)``).

    Each item is a dict: ``image`` float32 ``(3, h, w)`` in ``[0, 1]``; ``mask`` float32
    ``(1, h, w)`` in ``{0, 1}`` (zeros for good images); ``label`` int; ``path`` str;
    ``defect_type`` str; ``has_mask`` bool (False only for an anomalous image loaded without a
    mask, whose all-zero ``mask`` must then be left out of pixel metrics).
    """

    def __init__(self, samples: Sequence[Sample], image_size: int | tuple[int, int]) -> None:
        self.samples = list(samples)
        self.size = as_size(image_size, "image_size")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        img = load_image(sample.image)
        if sample.mask is not None:
            mask = load_mask(sample.mask, size=img.shape[:2], image_path=sample.image)
            mask = resize_mask(mask, self.size)
        else:
            mask = np.zeros(self.size, dtype=bool)
        return {
            "image": to_tensor(resize_image(img, self.size)),
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "label": int(sample.label),
            "path": str(sample.image),
            "defect_type": sample.defect_type,
            "has_mask": sample.mask is not None or sample.label == 0,
        }


def load_batch(paths: Sequence[str | Path], image_size: int | tuple[int, int]) -> torch.Tensor:
    """Arbitrary image files -> one ``(B, 3, h, w)`` batch, for prediction outside a data set."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if len(paths) == 0:
        raise DataError("no image files given to predict on. Pass at least one image path.")
    size = as_size(image_size, "image_size")
    return torch.stack([to_tensor(resize_image(load_image(p), size)) for p in paths])


def load_masks(samples: Sequence[Sample], image_size: int | tuple[int, int]) -> np.ndarray:
    """``(N, h, w)`` bool ground truth of ``samples`` at the model's size, read and checked as
    :class:`ImageDataset` reads them (all False for good images), for scoring precomputed
    features without going through the images' loader."""
    dataset = ImageDataset(samples, image_size)
    if len(dataset) == 0:
        return np.zeros((0, *dataset.size), dtype=bool)
    return np.stack([dataset[i]["mask"][0].numpy() > 0.5 for i in range(len(dataset))])
