"""``fod test MODEL DATA``: metrics of a trained model on a labelled category."""

from __future__ import annotations

import argparse
from pathlib import Path

from fod.cli import common


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "test",
        help="evaluate a model on a labelled category",
        description=(
            "Score the test images of DATA with MODEL and print image AUROC, pixel AUROC, "
            "AUPRO (30% FPR) and F1-max per defect type and overall (the model as trained: "
            "no selection on the test set)."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="model file from `fod train`")
    parser.add_argument("data", metavar="DATA", help="category folder with test/ (and masks)")
    parser.add_argument(
        "--json", metavar="FILE", help='write {"categories": {...}, "mean": {...}} to FILE'
    )
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="write heat-map panels, scores.csv and the loss plot to DIR",
    )
    parser.add_argument(
        "--examples", type=int, default=3, help="panels per defect type in the report (default: 3)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    parser.add_argument(
        "--image-size", type=int, help="expected image size; refused if the model's differs"
    )
    common.add_masks_option(parser)
    common.add_layout_option(parser)
    common.add_device_option(parser)
    common.add_quiet_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from fod.api import FOD
    from fod.io import check_not_input, check_outside, check_writable, write_json
    from fod.report import summarize, to_jsonable

    # outputs are checked before the model is loaded and the test set scored
    if args.json:
        check_not_input(args.json, [args.model, args.data], "the model or a test image")
        check_writable(args.json)
    if args.report:
        check_not_input(args.report, [args.model])
        check_outside(args.report, args.data, "report panels")
        check_writable(args.report, folder=True)
    requested = {"image_size": args.image_size} if args.image_size is not None else {}
    model = FOD.load(args.model, device=args.device, progress=not args.quiet, **requested)
    results = model.test(
        args.data,
        layout=args.layout,
        report_dir=args.report,
        examples=args.examples,
        batch_size=args.batch_size,
        require_masks=not args.allow_missing_masks,
    )
    counts = results["counts"]
    print(
        f"{results['category']}: {counts['normal']} good and {counts['anomalous']} anomalous "
        f"test images, {results['seconds']:.1f} s"
    )
    print(common.metrics_table(results))
    for key, why in results.get("reasons", {}).items():
        print(f"{key} n/a: {why}")
    if args.json:
        summary = summarize({results["category"]: common.category_entry(results)})
        print(f"results written to {write_json(Path(args.json), to_jsonable(summary))}")
    if args.report:
        print(f"report written to {args.report}")
    return 0
