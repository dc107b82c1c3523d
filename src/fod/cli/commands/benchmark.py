"""``fod benchmark ROOT --out DIR``: train and test every category of a data set.

Resumable at two levels: a category whose ``DIR/<name>/result.json`` exists is not run again,
a category whose model file exists is only tested, and an interrupted training continues from
its state. Results made with other settings are refused rather than mixed into one table.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fod.cli import common

RESULT_FILE = "result.json"
MODEL_FILE = "model.pt"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "benchmark",
        help="train and test every category of a data set",
        description=(
            "Train and test one model per category under ROOT (e.g. the 15 of MVTec AD) and "
            "write results.md, results.csv and results.json to DIR. Re-running skips finished "
            "categories and resumes an interrupted one."
        ),
    )
    parser.add_argument("root", metavar="ROOT", help="benchmark folder (or one category)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--json", metavar="FILE", help="also write the summary JSON to FILE")
    parser.add_argument(
        "--report", action="store_true", help="write heat-map panels to DIR/<category>/report"
    )
    parser.add_argument(
        "--examples", type=int, default=3, help="panels per defect type in reports (default: 3)"
    )
    common.add_train_options(parser)
    common.add_layout_option(parser)
    common.add_device_option(parser)
    common.add_quiet_option(parser)
    return parser


def _finished(path: Path, config: Any) -> dict[str, Any]:
    """The metrics of a finished category, refusing results made with other settings."""
    from fod.evaluation import load_run_result

    return dict(load_run_result(path, config, "metrics", "result"))


def run(args: argparse.Namespace) -> int:
    from fod.api import FOD
    from fod.data import find_categories
    from fod.io import write_json
    from fod.report import results_markdown, summarize, to_jsonable, write_results

    config = common.config_from_args(args)
    categories = find_categories(args.root, args.layout)
    out = Path(args.out).expanduser()
    per_category: dict[str, dict[str, Any]] = {}
    for index, category in enumerate(categories, 1):
        folder = out / category.name
        result_path = folder / RESULT_FILE
        head = f"[{index}/{len(categories)}] {category.name}"
        if result_path.exists():
            per_category[category.name] = _finished(result_path, config)
            print(f"{head}: done before, skipped ({result_path})")
            continue
        model_path = folder / MODEL_FILE
        state = common.state_path_for(model_path)
        progress = not args.quiet
        if model_path.exists() and not state.exists():
            print(f"{head}: model exists, testing it")
            model = FOD.load(model_path, device=args.device, progress=progress, **config.to_dict())
        else:
            print(f"{head}: training on {len(category.train)} images")
            model = FOD(config, device=args.device, cache_dir=args.cache, progress=progress)
            model.fit(category, state_path=state, resume=state.exists())
            model.save(model_path)
            state.unlink(missing_ok=True)
        results = model.test(
            category,
            report_dir=folder / "report" if args.report else None,
            examples=args.examples,
        )
        entry = common.category_entry(results)
        entry["train_seconds"] = model.stats.get("train_seconds")
        payload = {
            "category": category.name,
            "config": config.to_dict(),
            "metrics": entry,
            "images": results["images"],
        }
        write_json(result_path, to_jsonable(payload))
        per_category[category.name] = entry
        print(common.metrics_table(results))
    summary = summarize(per_category)
    paths = write_results(out, summary)
    if args.json:
        write_json(Path(args.json), to_jsonable(summary))
    print(results_markdown(summary, title=f"FOD on {Path(args.root).name}"))
    print(f"tables written to {paths['md']}, {paths['csv']} and {paths['json']}")
    return 0
