"""``fod predict MODEL INPUT...``: score any images, decide, and draw their heat maps.

Every readable image is scored; an image that cannot be read is listed with its reason (on
stderr, in the predictions file and in the summary line) and the exit code is
:data:`~fod.cli.common.EXIT_PARTIAL` instead of 0 (``--strict`` stops at the first one). With
``--out``, the heat maps and the predictions file of one run are moved into place together
at the end, so an interrupted or failed run leaves an earlier run's files as they were.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fod.cli import common

#: Entries of ``--out`` that one run writes (and replaces as a whole).
HEATMAPS = "heatmaps"
PREDICTION_FILES = ("predictions.csv", "predictions.json")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help="score images and write heat maps",
        description=(
            "Score image files and folders (searched recursively) with MODEL. An image is "
            "anomalous when its score exceeds the threshold (default: the model's, set "
            "at training without test labels). With --out, writes one heat-map picture per image "
            "and predictions.csv (or .json). Images that cannot be read are listed and skipped; "
            "the exit code is then 3 instead of 0 (--strict: stop at the first, exit code 2)."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="model file from `fod train`")
    parser.add_argument("inputs", metavar="INPUT", nargs="+", help="image files or folders")
    parser.add_argument("--out", metavar="DIR", help="write heat maps and predictions here")
    parser.add_argument(
        "--threshold", type=common.finite_float, help="decision threshold (default: model's)"
    )
    parser.add_argument(
        "--format", choices=("csv", "json"), default="csv", help="predictions file (default: csv)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    parser.add_argument(
        "--image-size", type=int, help="expected image size; refused if the model's differs"
    )
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first image that cannot be read"
    )
    common.add_device_option(parser)
    common.add_quiet_option(parser)
    return parser


def output_names(paths: list[Path]) -> list[str]:
    """Distinct file stems for the heat maps: each path relative to the inputs' common folder,
    with '/' replaced by '__' (so test/hole/000.png and test/scratch/000.png do not clash)."""
    resolved = [p.parent.resolve() / p.name for p in paths]  # a link keeps its own name
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


def _check_outputs(out: Path, args: argparse.Namespace, paths: list[Path]) -> None:
    """Refuse an --out whose files would replace the model or an input image."""
    from fod.errors import OutputError
    from fod.io import check_not_input, check_outside, check_writable

    check_writable(out, folder=True)
    for name in PREDICTION_FILES:
        check_not_input(out / name, [args.model, *paths], "the model or an input image")
    heatmaps = (out / HEATMAPS).resolve()
    for item in args.inputs:
        check_outside(out / HEATMAPS, item, "heat maps")
    for path in [Path(args.model), *paths]:
        if path.resolve().is_relative_to(heatmaps):
            raise OutputError(
                f"{out / HEATMAPS}: this run replaces that folder, but it holds an input "
                f"({path}). Choose another --out folder."
            )


def run(args: argparse.Namespace) -> int:
    from fod.api import FOD
    from fod.data import image_files
    from fod.errors import DataError
    from fod.io import OutputSet, write_json
    from fod.report import save_png, write_csv

    paths = image_files(args.inputs)
    out = Path(args.out).expanduser() if args.out else None
    if out is not None:
        _check_outputs(out, args, paths)
    requested = {"image_size": args.image_size} if args.image_size is not None else {}
    model = FOD.load(
        args.model,
        device=args.device,
        threshold=args.threshold,
        progress=not args.quiet,
        **requested,
    )
    names = dict(zip(paths, output_names(paths), strict=True))
    records: dict[Path, dict[str, Any]] = {}
    unreadable: list[dict[str, Any]] = []

    def skip(path: Path, error: DataError) -> None:
        if args.strict:
            raise error
        reason = error.cli_message()
        unreadable.append({"path": str(path), "error": reason})
        records[path] = {"path": str(path), "threshold": model.threshold, "error": reason}
        common.eprint(f"skipped: {reason}")

    outputs = OutputSet(out, [HEATMAPS, *PREDICTION_FILES]) if out is not None else None
    try:
        flagged = 0
        for pred in model.iter_predict(paths, batch_size=args.batch_size, on_error=skip):
            flagged += pred.anomalous
            record = {**pred.as_dict(), "threshold": model.threshold, "error": ""}
            if outputs is not None:
                name = f"{names[pred.path]}.png"
                save_png(outputs.path(HEATMAPS) / name, model.panel(pred))
                record["heatmap"] = str(outputs.final(HEATMAPS) / name)
            records[pred.path] = record
            verdict = "ANOMALOUS" if pred.anomalous else "normal"
            print(f"{pred.score:12.6g}  {verdict:9s}  {pred.path}")
        scored = len(paths) - len(unreadable)
        if scored == 0:
            raise DataError(
                f"none of the {len(paths)} images could be read (reasons above). Check the "
                "files, or give other inputs."
            )
        print(f"{flagged} of {scored} images anomalous (threshold {model.threshold:.6g})")
        if unreadable:
            print(
                f"{len(unreadable)} of {len(paths)} images could not be read and were skipped "
                f"(reasons above{' and in the predictions file' if out else ''}); "
                f"exit code {common.EXIT_PARTIAL}"
            )
        if outputs is not None:
            rows = [records[p] for p in paths]
            if args.format == "json":
                payload = {"model": str(args.model), "threshold": model.threshold}
                payload["predictions"] = [
                    {k: v for k, v in r.items() if k != "error"} for r in rows if not r["error"]
                ]
                payload["unreadable"] = unreadable
                write_json(outputs.path("predictions.json"), payload)
            else:
                columns = ["path", "score", "anomalous", "threshold", "heatmap", "error"]
                write_csv(outputs.path("predictions.csv"), rows, columns)
            outputs.commit()
            print(f"predictions written to {outputs.final(f'predictions.{args.format}')}")
    finally:
        if outputs is not None:
            outputs.discard()
    return common.EXIT_PARTIAL if unreadable else 0
