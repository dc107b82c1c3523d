"""Data: folder layouts, robust image and mask reading, and the torch dataset."""

from fod.data.dataset import ImageDataset, load_batch, load_masks, to_tensor
from fod.data.images import as_size, load_image, load_mask, resize_image, resize_mask
from fod.data.layouts import (
    GOOD_TYPES,
    IMAGE_EXTENSIONS,
    LAYOUTS,
    Category,
    Sample,
    detect_layout,
    find_categories,
    image_files,
    load_category,
    training_samples,
)

__all__ = [
    "GOOD_TYPES",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "Category",
    "ImageDataset",
    "Sample",
    "as_size",
    "detect_layout",
    "find_categories",
    "image_files",
    "load_batch",
    "load_category",
    "load_image",
    "load_mask",
    "load_masks",
    "resize_image",
    "resize_mask",
    "to_tensor",
    "training_samples",
]
