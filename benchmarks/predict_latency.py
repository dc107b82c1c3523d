"""Seconds per image of `FOD.predict` (reading, resizing, backbone, transformers, head, map).

    python benchmarks/predict_latency.py MODEL.pt IMAGE_FOLDER [--images 64] [--batch-size 1]

The model is loaded and warmed up on one batch first; the figure is the median over batches
of the wall time per image, on the CPU with torch's default thread count.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fod.api import FOD, image_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--images", dest="count", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    model = FOD.load(args.model, device="cpu", progress=False)
    paths = image_files(args.images)[: args.count + args.batch_size]
    model.predict(paths[: args.batch_size], batch_size=args.batch_size)  # warm-up
    times = []
    for first in range(args.batch_size, len(paths), args.batch_size):
        chunk = paths[first : first + args.batch_size]
        t0 = time.perf_counter()
        model.predict(chunk, batch_size=args.batch_size)
        times.append((time.perf_counter() - t0) / len(chunk))
    print(
        f"{statistics.median(times) * 1000:.1f} ms per image (median of {len(times)} batches "
        f"of {args.batch_size}, {torch.get_num_threads()} threads, input "
        f"{model.config.image_size})"
    )


if __name__ == "__main__":
    main()
