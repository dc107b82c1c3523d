"""Compare the image-score rules of the synthetic validation without test labels.

The held-out good images of a trained model get the validation's synthetic anomalies again
(same split, seed and placement), and every weighting of levels and parts scores them. Then, many
times, the held-out images are split in halves at random: each rule is formed on one half
(its band, spreads or single weighting, with the anomalies made on that half's images) and
its synthetic image AUROC is measured on the other half. Only good training images are read.

usage: python benchmarks/rule_split_half.py MODEL DATA [--splits 40]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fod.api import FOD
from fod.data import load_batch, training_samples
from fod.data.anomalies import synthetic_anomalies
from fod.metrics.classification import auroc_from_groups
from fod.training.crossfit import resolve_calibration
from fod.training.features import image_features
from fod.training.fit import holdout_split
from fod.training.validation import (
    MIN_ANOMALIES,
    PER_IMAGE,
    band_scales,
    near_best,
    nearest_plain,
    rate_weightings,
    simplest,
    token_scores,
)


def split_half(
    rows: list[dict], g: np.ndarray, a: np.ndarray, owner: np.ndarray, splits: int, seed: int = 0
) -> dict[str, list[float]]:
    """Synthetic image AUROC on the other half, per split, of the rules ``single``, ``best``,
    ``band`` (every weighting of the band) and ``simplest`` (the band's with the fewest parts)
    formed on one half: ``g`` (K, N) good and ``a`` (K, M) anomalous image scores of the K
    weightings ``rows`` (``levels``, ``parts``), ``owner`` (M,) the good image each anomaly
    was made on (an anomaly goes with its image's half)."""
    n = g.shape[1]
    rng = np.random.default_rng(seed)
    results: dict[str, list[float]] = {"single": [], "best": [], "band": [], "simplest": []}

    def averaged(members: list[int], first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spread = band_scales(torch.from_numpy(g[members][:, first])).numpy()[:, None]
        return (a[members] / spread).mean(0), (g[members] / spread).mean(0)

    for _ in range(splits):
        first = np.zeros(n, dtype=bool)
        first[rng.permutation(n)[: n // 2]] = True
        a_first = first[owner]
        table = [
            {**r, "auroc": auroc_from_groups(a[k][a_first], g[k][first])}
            for k, r in enumerate(rows)
        ]
        aurocs = [r["auroc"] for r in table]
        top = int(np.argmax(aurocs))
        near = near_best(aurocs, int(a_first.sum()), int(first.sum()))
        single = nearest_plain(table, near)
        for name, (sa, sg) in {
            "single": (a[single], g[single]),
            "best": (a[top], g[top]),
            "band": averaged(near, first),
            "simplest": averaged(simplest(table, near), first),
        }.items():
            results[name].append(auroc_from_groups(sa[~a_first], sg[~first]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--splits", type=int, default=40)
    args = parser.parse_args()

    model = FOD.load(args.model, device="cpu", progress=False)
    config = model.config
    _, train = training_samples(args.data)
    if resolve_calibration(config.calibration, len(train), config.holdout) != "holdout":
        raise SystemExit(
            f"{args.model} was cross-fitted on {len(train)} good images; this check repeats "
            "the validation of a held-out slice. Train with --calibration holdout to check it."
        )
    _, held_idx = holdout_split(len(train), config.holdout, config.seed)
    held = [train[int(i)] for i in held_idx]
    images = load_batch([s.image for s in held], config.image_size)
    count = max(MIN_ANOMALIES, PER_IMAGE * len(held))
    anomalous_images, _, _ = synthetic_anomalies(
        images, count, config.seed, placement=config.anomaly_placement
    )
    assert model.levels is not None and model.heads is not None
    good = token_scores(model.levels, model.heads, model.features(held))
    anomalous_features = image_features(model._backbone(), anomalous_images, "cpu")
    anomalous = token_scores(model.levels, model.heads, anomalous_features)
    rows, _, g_all, a_all = rate_weightings(
        good, anomalous, model.heads[0].parts, config.image_size
    )
    g, a = g_all.double().numpy(), a_all.double().numpy()
    owner = np.arange(count) % len(held)  # the held-out image each anomaly was made on
    results = split_half(rows, g, a, owner, args.splits)
    print(
        f"{args.model}: {len(held)} held-out images, {count} anomalies "
        f"({config.anomaly_placement}), {args.splits} splits"
    )
    for name, values in results.items():
        print(f"  {name:8s} synthetic image AUROC on the other half: {np.mean(values):.4f}")


if __name__ == "__main__":
    main()
