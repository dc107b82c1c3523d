"""The nearest-patch scorer with a random and a coverage memory bank, at several sizes.

The calibrated head's ``nearest`` part searches a memory bank of good tokens
(:func:`fod.scoring.normality.memory_bank`). This measures, with no transformer in the way,
what the bank's selection does to the training-free nearest-patch scorer of
``fod bench baselines`` (both levels, same heat-map pipeline and metrics), and how long the
bank takes to build:

    python benchmarks/bank_selection.py ../shared/datasets/mtd --cache runs/cache \\
        --runs random:16384 random:40000 coverage:16384 coverage:32768
"""

from __future__ import annotations

import argparse
import time

import torch

from fod.backbone import create_backbone
from fod.data import load_category
from fod.evaluation import category_features
from fod.report import metrics_line
from fod.scoring import normality
from fod.scoring.anomaly_map import anomaly_map, image_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="category folder (MVTec layout)")
    parser.add_argument("--cache", help="feature cache folder")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["random:16384", "random:40000", "coverage:16384", "coverage:32768"],
        help="SELECTION:SIZE pairs to score",
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    extractor = create_backbone("efficientnet_lite2")
    features = category_features(
        load_category(args.data), extractor, args.image_size, args.cache, progress=False
    )
    print("| bank | size | image AUROC / pixel AUROC / AUPRO | bank build (s) | scoring (s) |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        selection, size = run.split(":")
        build = score = 0.0
        levels = []
        for train, test in zip(features.train, features.test, strict=True):
            t0 = time.perf_counter()
            bank = normality.memory_bank(
                train.flatten(2).transpose(1, 2), int(size), args.seed, selection
            )
            t1 = time.perf_counter()
            d = normality.nearest_distance(test.flatten(2).transpose(1, 2), bank)
            levels.append(d.reshape(-1, *train.shape[2:]))
            build, score = build + t1 - t0, score + time.perf_counter() - t1
        maps = anomaly_map(levels, args.image_size)
        metrics = features.evaluate(maps, image_scores(maps))
        line = metrics_line(metrics)
        print(f"| {selection} | {size} | {line} | {build:.1f} | {score:.1f} |", flush=True)


if __name__ == "__main__":
    main()
