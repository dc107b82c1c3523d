"""``fod benchmark ROOT --out DIR``: train and test every category of a data set.

Resumable at two levels: a category whose ``DIR/<name>/result.json`` exists is not run again,
a category whose model file exists is only tested, and an interrupted training continues from
its state. Results made with other settings are refused rather than mixed into one table.

Under ``torchrun --nproc-per-node N [--nnodes M ...] -m fod benchmark ...`` the categories are
shared among the ranks (:func:`fod.distributed.balanced_shares`: largest first, each to the
least-loaded rank; the same split on every run). Each rank trains and tests its own categories
alone and writes their folders; rank 0 gathers the metrics and writes the one table, in the
order of a one-process run. A rank that fails loses only the category it was working on:
the same command again skips every finished category and resumes the interrupted ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fod.cli import common

if TYPE_CHECKING:
    import torch

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
    common.add_masks_option(parser)
    common.add_train_options(parser)
    common.add_layout_option(parser)
    common.add_device_option(parser)
    common.add_precision_option(parser)
    common.add_quiet_option(parser)
    return parser


def _finished(path: Path, config: Any) -> dict[str, Any]:
    """The metrics of a finished category, refusing results made with other settings."""
    from fod.evaluation import load_run_result

    return dict(load_run_result(path, config, "metrics", "result"))


def run(args: argparse.Namespace) -> int:
    from fod import distributed

    return distributed.run_in_group(args.device, lambda _, device: _run(args, device))


def _run(args: argparse.Namespace, device: torch.device) -> int:
    from fod import distributed
    from fod.data import find_categories
    from fod.io import check_not_input, check_writable, write_json
    from fod.report import results_markdown, summarize, to_jsonable, write_results

    ctx = distributed.context()
    config = common.config_from_args(args)
    categories = find_categories(args.root, args.layout, require_masks=not args.allow_missing_masks)
    out = Path(args.out).expanduser()

    def check_outputs() -> None:  # every output location, before the first category is trained
        check_writable(out, folder=True)
        if args.json:
            check_not_input(args.json, [args.root], "an image of the data set")
            check_writable(args.json)
        if args.cache:
            check_writable(args.cache, folder=True)

    distributed.on_main(check_outputs)
    sizes = [len(c.train) + len(c.test) for c in categories]
    mine = distributed.balanced_shares(sizes, ctx.world_size)[ctx.rank]
    if ctx.enabled:
        names = ", ".join(categories[i].name for i in mine) or "none"
        print(f"{ctx.prefix()}categories: {names}", flush=True)
    done: dict[str, dict[str, Any]] = {}
    with distributed.local_work():  # each rank trains and tests its categories alone
        for position, i in enumerate(mine, 1):
            head = f"{ctx.prefix()}[{position}/{len(mine)}] {categories[i].name}"
            done[categories[i].name] = _run_category(args, config, categories[i], out, head, device)
    gathered = distributed.all_gather_object(done)
    if not ctx.is_main:
        return 0
    finished = {name: entry for part in gathered for name, entry in part.items()}
    per_category = {c.name: finished[c.name] for c in categories}  # the single-process order
    summary = summarize(per_category)
    paths = write_results(out, summary)
    if args.json:
        write_json(Path(args.json), to_jsonable(summary))
    print(results_markdown(summary, title=f"FOD on {Path(args.root).name}"))
    print(f"tables written to {paths['md']}, {paths['csv']} and {paths['json']}")
    return 0


def _run_category(
    args: argparse.Namespace,
    config: Any,
    category: Any,
    out: Path,
    head: str,
    device: torch.device,
) -> dict[str, Any]:
    """Train (or resume, or only test) and test one category; its metrics entry."""
    from fod.api import FOD
    from fod.io import write_json
    from fod.report import to_jsonable

    folder = out / category.name
    result_path = folder / RESULT_FILE
    if result_path.exists():
        print(f"{head}: done before, skipped ({result_path})", flush=True)
        return _finished(result_path, config)
    model_path = folder / MODEL_FILE
    state = common.state_path_for(model_path)
    progress = not args.quiet
    if model_path.exists() and not state.exists():
        print(f"{head}: model exists, testing it", flush=True)
        model = FOD.load(model_path, device=device, progress=progress, **config.to_dict())
    else:
        print(f"{head}: training on {len(category.train)} images", flush=True)
        model = FOD(
            config,
            device=device,
            cache_dir=args.cache,
            progress=progress,
            precision=args.precision,
        )
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
    print(common.metrics_table(results), flush=True)
    # the entry as stored, so that a fresh run and a resumed one give the same table
    return _finished(result_path, config)
