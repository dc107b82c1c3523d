"""An unaligned copy of an MVTec-layout category: a stress test for position statistics.

Per-position statistics (a Gaussian per token position, the ``residual`` and ``feature`` parts)
assume the product sits at the same place in every image. This script writes a copy of a
category in which every image, and its mask, is circularly shifted by a seeded random offset
(up to the full height and width) and flipped left to right half the time, so no position
means the same thing twice. The offsets depend only on the file's path inside the category.
Write it outside the repository (it copies every image):

    python benchmarks/unaligned_copy.py ../shared/datasets/mtd /tmp/mtd_unaligned
    fod train /tmp/mtd_unaligned --out /tmp/u.pt && fod test /tmp/u.pt /tmp/mtd_unaligned
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from fod.data import IMAGE_EXTENSIONS


def offsets(relative: str) -> tuple[float, float, bool]:
    """Seeded (fraction of the height, fraction of the width, flip) for one file."""
    rng = np.random.default_rng(zlib.crc32(relative.encode()))
    fy, fx = rng.uniform(0.0, 1.0, 2)
    return float(fy), float(fx), bool(rng.random() < 0.5)


def move(image: Image.Image, fy: float, fx: float, flip: bool) -> Image.Image:
    """``image`` rolled by (fy * height, fx * width) pixels and flipped left-right if ``flip``."""
    a = np.asarray(image)
    a = np.roll(a, (int(fy * a.shape[0]), int(fx * a.shape[1])), axis=(0, 1))
    if flip:
        a = a[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(a))


def make_copy(source: Path, out: Path) -> int:
    """Write the unaligned copy of ``source`` (MVTec layout) to ``out``; returns the images."""
    count = 0
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.suffix.lower() not in IMAGE_EXTENSIONS or rel.parts[0] == "ground_truth":
            continue
        fy, fx, flip = offsets(str(rel))
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        move(Image.open(path), fy, fx, flip).save(target)
        count += 1
        if rel.parts[0] == "test" and rel.parts[1] != "good":
            mask = source / "ground_truth" / rel.parts[1] / f"{path.stem}_mask.png"
            if mask.is_file():
                mask_target = out / "ground_truth" / rel.parts[1] / mask.name
                mask_target.parent.mkdir(parents=True, exist_ok=True)
                move(Image.open(mask), fy, fx, flip).save(mask_target)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="MVTec-layout category folder")
    parser.add_argument("out", type=Path, help="new folder for the copy (outside the repo)")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; pass a new folder")
    print(f"{make_copy(args.source, args.out)} images written to {args.out}")


if __name__ == "__main__":
    main()
