"""A category with fewer good training images, as a folder of links (no image is copied).

Users often have only a few dozen good images. This script makes a view of an MVTec-layout
category whose ``train/good`` holds a seeded random subset of the original's, while ``test``
and ``ground_truth`` link to the original folders, so `fod train`, `fod test` and
`fod bench baselines` run on it unchanged and score the very same test set:

    python benchmarks/subset_view.py ../shared/datasets/mtd runs/mtd50 --n 50 --seed 0
    fod train runs/mtd50 --out runs/mtd50.pt && fod test runs/mtd50.pt runs/mtd50
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from fod.data import IMAGE_EXTENSIONS


def make_view(source: Path, out: Path, n: int, seed: int) -> list[Path]:
    """Write the view; returns the chosen training images (sorted)."""
    good = sorted(
        p for p in (source / "train" / "good").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not 1 <= n <= len(good):
        raise SystemExit(f"--n must lie in 1..{len(good)} (the images in {source}/train/good)")
    chosen = sorted(random.Random(seed).sample(good, n))
    target = out / "train" / "good"
    if out.exists():
        raise SystemExit(f"{out} exists; remove it or choose another folder")
    target.mkdir(parents=True)
    for path in chosen:
        (target / path.name).symlink_to(path.resolve())
    for name in ("test", "ground_truth"):
        if (source / name).exists():
            (out / name).symlink_to((source / name).resolve(), target_is_directory=True)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="an MVTec-layout category folder")
    parser.add_argument("out", type=Path, help="the view folder to create")
    parser.add_argument("--n", type=int, required=True, help="good training images to keep")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chosen = make_view(args.source, args.out, args.n, args.seed)
    print(f"{args.out}: {len(chosen)} training images of {args.source}, same test set")


if __name__ == "__main__":
    main()
