"""``fod predict MODEL INPUT...``: score any images, decide, and draw their heat maps."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fod.cli import common


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help="score images and write heat maps",
        description=(
            "Score image files and folders (searched recursively) with MODEL. An image is "
            "anomalous when its score exceeds the threshold (default: the model's, the largest "
            "training score). With --out, writes one heat-map picture per image and "
            "predictions.csv (or .json)."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="model file from `fod train`")
    parser.add_argument("inputs", metavar="INPUT", nargs="+", help="image files or folders")
    parser.add_argument("--out", metavar="DIR", help="write heat maps and predictions here")
    parser.add_argument("--threshold", type=float, help="decision threshold (default: model's)")
    parser.add_argument(
        "--format", choices=("csv", "json"), default="csv", help="predictions file (default: csv)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    parser.add_argument(
        "--image-size", type=int, help="expected image size; refused if the model's differs"
    )
    common.add_device_option(parser)
    common.add_quiet_option(parser)
    return parser


def output_names(paths: list[Path]) -> list[str]:
    """Distinct file stems for the heat maps: each path relative to the inputs' common folder,
    with '/' replaced by '__' (so test/hole/000.png and test/scratch/000.png do not clash)."""
    resolved = [p.resolve() for p in paths]
    base = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    names: list[str] = []
    seen: set[str] = set()
    for p in resolved:
        rel = p.relative_to(base).with_suffix("")
        name = "__".join(rel.parts)
        candidate, i = name, 1
        while candidate in seen:
            candidate, i = f"{name}_{i}", i + 1
        seen.add(candidate)
        names.append(candidate)
    return names


def run(args: argparse.Namespace) -> int:
    from fod.api import FOD, image_files
    from fod.io import write_json
    from fod.report import save_png, write_csv

    requested = {"image_size": args.image_size} if args.image_size is not None else {}
    model = FOD.load(
        args.model,
        device=args.device,
        threshold=args.threshold,
        progress=not args.quiet,
        **requested,
    )
    paths = image_files(args.inputs)
    names = dict(zip(paths, output_names(paths), strict=True))
    records: list[dict[str, Any]] = []
    out = Path(args.out) if args.out else None
    flagged = 0
    for pred in model.iter_predict(paths, batch_size=args.batch_size):
        name = names[pred.path]
        flagged += pred.anomalous
        record = {**pred.as_dict(), "threshold": model.threshold}
        if out is not None:
            heatmap = save_png(out / "heatmaps" / f"{name}.png", model.panel(pred))
            record["heatmap"] = str(heatmap)
        records.append(record)
        verdict = "ANOMALOUS" if pred.anomalous else "normal"
        print(f"{pred.score:12.6g}  {verdict:9s}  {pred.path}")
    print(f"{flagged} of {len(paths)} images anomalous (threshold {model.threshold:.6g})")
    if out is not None:
        if args.format == "json":
            payload = {"model": str(args.model), "threshold": model.threshold}
            payload["predictions"] = records
            written = write_json(out / "predictions.json", payload)
        else:
            columns = ["path", "score", "anomalous", "threshold", "heatmap"]
            written = write_csv(out / "predictions.csv", records, columns)
        print(f"predictions written to {written}")
    return 0
