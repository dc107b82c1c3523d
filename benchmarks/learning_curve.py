"""Test metrics of one FOD configuration after chosen epochs: a diagnostic, not a result.

Trains one category with ``fod``'s own trainer, pausing at each epoch of ``--epochs`` to score
the test set twice: with the configuration's score (spec section 6) and with the
reconstruction term alone. Each pause resumes the same run (the trainer's state is exact),
so the curve is one training run. Because it reads test labels at every pause, a "best epoch"
read off this curve is model selection on the test set: use it to understand training, and
report such a figure only with that label.

    python benchmarks/learning_curve.py ../shared/datasets/mtd --layers 3 --d-model 128 \
        --heads 4 --num-layers 2 --batch-size 4 --lr 1e-3 --epochs 2 5 10 20 30 \
        --cache runs/cache --json runs/curve.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from fod.backbone import create_backbone
    from fod.config import make_config
    from fod.data import load_category
    from fod.evaluation import category_features
    from fod.model.scores import reconstruction_score, score_branches, token_scores
    from fod.scoring.anomaly_map import anomaly_map
    from fod.training.trainer import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="one category folder")
    p.add_argument("--epochs", type=int, nargs="+", required=True, help="pause after these")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--backbone", default="efficientnet_lite2")
    p.add_argument("--layers", type=int, nargs="+")
    p.add_argument("--d-model", type=int, nargs="+", default=[64, 128])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--cache", default="runs/cache")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    config = make_config(
        None,
        backbone=args.backbone,
        layers=args.layers,
        image_size=args.image_size,
        d_model=tuple(args.d_model),
        heads=args.heads,
        num_layers=args.num_layers,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    category = load_category(args.data)
    backbone = create_backbone(config.backbone, config.weights, config.layers)
    features = category_features(category, backbone, config.image_size, args.cache, progress=False)

    def metrics(levels: list[torch.Tensor]) -> dict[str, Any]:
        r = features.evaluate(anomaly_map(levels, config.image_size))
        per = {k: round(v["image_auroc"], 3) for k, v in r["per_defect"].items()}
        return {k: r[k] for k in ("image_auroc", "pixel_auroc", "aupro")} | {"per_defect": per}

    rows: list[dict[str, Any]] = []
    train_seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.pt"
        for i, epochs in enumerate(sorted(args.epochs)):
            t0 = time.perf_counter()
            result = train(
                config.replace(epochs=epochs), features.train, state, i > 0, progress=False
            )
            train_seconds += time.perf_counter() - t0
            score_maps, rec_maps = [], []
            with torch.no_grad():
                for model, feats in zip(result.models, features.test, strict=True):
                    h, w = feats.shape[-2:]
                    s, r = [], []
                    for first in range(0, feats.shape[0], 32):
                        batch = feats[first : first + 32]
                        # One forward gives both maps (what model.score computes, plus rec).
                        out = model(
                            batch, div_branches=score_branches(model.variant), entropy=False
                        )
                        s.append(token_scores(out, model.variant, h, w))
                        r.append(reconstruction_score(out.tokens, out.reconstruction))
                    score_maps.append(torch.cat(s))
                    rec_maps.append(torch.cat(r).reshape(-1, h, w))
            row = {
                "epoch": epochs,
                "train_seconds": round(train_seconds, 1),
                "train_rec_loss": result.history[-1]["rec"],
                "score": metrics(score_maps),
                "rec_only": metrics(rec_maps),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"config": config.to_dict(), "data": str(args.data), "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    print("| epoch | train rec loss | image AUROC | pixel AUROC | AUPRO | image AUROC, rec only |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        s, r = row["score"], row["rec_only"]
        print(
            f"| {row['epoch']} | {row['train_rec_loss']:.3f} | {s['image_auroc']:.3f} | "
            f"{s['pixel_auroc']:.3f} | {s['aupro']:.3f} | {r['image_auroc']:.3f} |"
        )
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
