"""Unaligned objects made from a real category: a stress test for position statistics.

We were warned that on some real data sets (objects at varying places and angles) the
per-position Gaussian fails at the pixel level while the nearest patch does not. This script
makes such a data set, in the MVTec AD layout, from any category fod reads (MVTec AD, BTAD,
MVTec 3D-AD RGB): every image becomes an "object" of 120-150 pixels, turned by a seeded
random angle and pasted at a random place on a plain, slightly noisy grey background of
S x S pixels; its mask goes through the same scaling, turn and paste, so defects stay where
they were on the object. Write it outside the repository:

    python benchmarks/object_copy.py ../shared/datasets/mtd /tmp/mtd_objects
    fod train /tmp/mtd_objects --out /tmp/o.pt && fod test /tmp/o.pt /tmp/mtd_objects
    fod bench baselines /tmp/mtd_objects

Seeded: the pose of each image depends only on its split and file name, and the subsets on
``--seed``.
"""

from __future__ import annotations

import argparse
import random
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from fod.data import Sample, load_category

#: Side of the output images, the background grey level and its noise (8-bit units).
SIZE, BACKGROUND, NOISE = 256, 90.0, 3.0
#: Range of the object's longer side, in pixels.
OBJECT_SIDE = (120.0, 150.0)


def place(
    image: Image.Image, mask: Image.Image | None, key: str, size: int = SIZE
) -> tuple[Image.Image, Image.Image]:
    """``image`` (and ``mask``) scaled, turned and pasted on the background, seeded by
    ``key``; returns the new image and its mask (all zero without ``mask``)."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    w, h = image.size
    scale = rng.uniform(*OBJECT_SIDE) / max(w, h)
    shape = (max(1, round(w * scale)), max(1, round(h * scale)))
    obj = image.convert("RGB").resize(shape, Image.BILINEAR)
    alpha = Image.new("L", shape, 255)
    angle = float(rng.uniform(0.0, 360.0))
    obj = obj.rotate(angle, Image.BILINEAR, expand=True)
    alpha = alpha.rotate(angle, Image.NEAREST, expand=True)
    x = int(rng.integers(0, size - obj.size[0] + 1))
    y = int(rng.integers(0, size - obj.size[1] + 1))
    noise = rng.normal(BACKGROUND, NOISE, (size, size, 3))
    canvas = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
    canvas.paste(obj, (x, y), alpha)
    full = Image.new("L", (size, size), 0)
    if mask is not None:
        turned = mask.convert("L").resize(shape, Image.NEAREST).rotate(angle, expand=True)
        full.paste(turned, (x, y), alpha)
    return canvas, full


def make_copy(
    source: Path,
    out: Path,
    train: int = 200,
    test_good: int = 40,
    per_type: int = 15,
    seed: int = 0,
) -> int:
    """Write the object copy of ``source`` (any layout fod reads; every anomalous image needs
    its mask) to ``out`` in the MVTec AD layout: seeded subsets of ``train`` good training
    images, ``test_good`` good test images and ``per_type`` images of each defect type.
    Returns the number of images written."""
    category = load_category(source)
    rnd = random.Random(seed)

    def write(sample: Sample, split: str, folder: str) -> None:
        mask = Image.open(sample.mask) if sample.mask is not None else None
        image, new_mask = place(Image.open(sample.image), mask, f"{split}/{sample.image.name}")
        target = out / split / folder / f"{sample.image.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target)
        if mask is not None:
            mask_target = out / "ground_truth" / folder / f"{sample.image.stem}_mask.png"
            mask_target.parent.mkdir(parents=True, exist_ok=True)
            new_mask.save(mask_target)

    def pick(samples: list[Sample], n: int) -> list[Sample]:
        return sorted(rnd.sample(samples, min(n, len(samples))), key=lambda s: s.image)

    chosen = [(s, "train", "good") for s in pick(category.train, train)]
    for kind in sorted({s.defect_type for s in category.test}):
        good = kind == category.good_type
        samples = [s for s in category.test if s.defect_type == kind]
        folder = "good" if good else kind
        chosen += [(s, "test", folder) for s in pick(samples, test_good if good else per_type)]
    for sample, split, folder in chosen:
        write(sample, split, folder)
    return len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="category folder (any layout fod reads)")
    parser.add_argument("out", type=Path, help="new folder for the copy (outside the repo)")
    parser.add_argument("--train", type=int, default=200, help="good training images")
    parser.add_argument("--test-good", type=int, default=40, help="good test images")
    parser.add_argument("--per-type", type=int, default=15, help="test images per defect type")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; pass a new folder")
    n = make_copy(args.source, args.out, args.train, args.test_good, args.per_type, args.seed)
    print(f"{n} images written to {args.out}")


if __name__ == "__main__":
    main()
