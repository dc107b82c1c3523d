"""The GPU check behind ``benchmarks/gpu_check.sh``: correctness and speed on one device, one JSON.

Three parts, each timed, written to one JSON file (``--out``):

1. ``equivalence``: ``tests/test_model_equivalence.py`` (fast path against the direct
   transcription: values, gradients, scores) run on ``--device`` via ``FOD_TEST_DEVICE``.
2. ``bench_step``: ``fod bench step`` on ``--device`` at batch 1 and 8, fast vs direct path,
   the authors' sizes.
3. ``train``: one category (default: MTD) with the paper's configuration (``FODConfig()``)
   for as many whole epochs as fit in ``--train-budget`` seconds (default 360), then the
   threshold and the test metrics; feature extraction and testing are timed separately.

``--tiny`` shrinks every part (a subset of the equivalence tests, tiny step sizes, a small
generated category and a tiny model) so that the whole script runs in CI on a CPU in well
under a minute with ``--device cpu``; the JSON has the same shape.

    benchmarks/gpu_check.sh --device cuda --out runs/gpu_check.json
    benchmarks/gpu_check.sh --device cpu --tiny --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The whole check must stay under 10 minutes on a GPU; training gets what is left of this.
TOTAL_BUDGET_S = 570.0


def _equivalence(device: str, tiny: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd.append(str(ROOT / "tests" / "test_model_equivalence.py"))
    if tiny:
        cmd += ["-k", "whole and (full or patch) or float32"]
    env = {**os.environ, "FOD_TEST_DEVICE": device}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error|errors)", summary)}
    return {
        "ok": proc.returncode == 0,
        "passed": counts.get("passed", 0),
        "failed": counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0),
        "summary": summary,
        "seconds": time.perf_counter() - start,
    }


def _bench_step(device: str, tiny: bool) -> dict[str, Any]:
    from fod.bench import step

    start = time.perf_counter()
    levels = step.TINY_LEVELS if tiny else step.AUTHORS_LEVELS
    heads, layers = (4, 1) if tiny else (8, 3)
    report = step.run_benchmark(
        (1, 8),
        ("fast", "direct"),
        levels,
        heads,
        layers,
        repeats=1 if tiny else 3,
        timeout=300.0,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
        device=device,
    )
    report["seconds"] = time.perf_counter() - start
    return report


def _train(
    data: Path, device: str, precision: str, budget: float, tiny: bool, work: Path
) -> dict[str, Any]:
    import torch

    from fod.api import FOD
    from fod.config import FODConfig, make_config
    from fod.data import load_category
    from fod.training import train

    tiny_sizes = {"backbone": "efficientnet_lite0", "image_size": 64, "d_model": (16, 16)}
    tiny_sizes.update(heads=2, num_layers=1, batch_size=4)
    config = FODConfig(**tiny_sizes) if tiny else FODConfig()  # FODConfig(): the paper's
    category = load_category(data)
    model = FOD(config, device=device, progress=False, precision=precision)
    t0 = time.perf_counter()
    features = model.features(category.train)
    feature_seconds = time.perf_counter() - t0
    state = work / "state.pt"
    epoch_seconds: list[float] = []
    result = None
    while True:  # one epoch per call, resumed from the state: stop before the budget runs out
        t0 = time.perf_counter()
        epochs = len(epoch_seconds) + 1
        result = train(
            make_config(config, epochs=epochs),
            features,
            state_path=state,
            resume=epochs > 1,
            progress=False,
            device=model.device,
            precision=precision,
        )
        epoch_seconds.append(time.perf_counter() - t0)
        if sum(epoch_seconds) + max(epoch_seconds) > budget:
            break
    model.levels, model.history = result.models, result.history
    model._calibrate(features)
    t0 = time.perf_counter()
    results = model.test(category)
    n = len(category.train)
    return {
        "data": str(data),
        "config": make_config(config, epochs=len(epoch_seconds)).to_dict(),
        "precision": precision,
        "budget_s": budget,
        "epochs": len(epoch_seconds),
        "epoch_seconds": epoch_seconds,
        "train_images_per_s": n * len(epoch_seconds) / sum(epoch_seconds),
        "feature_seconds": feature_seconds,
        "test_seconds": time.perf_counter() - t0,
        "train_images": n,
        "test_images": len(category.test),
        "metrics": {k: results.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max")},
        "cuda_peak_mb": (
            torch.cuda.max_memory_allocated() / 2**20 if model.device.type == "cuda" else None
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--data", type=Path, help="category folder (default: MTD)")
    parser.add_argument("--train-budget", type=float, help="seconds of training (default 360)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CI smoke test on CPU)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON file")
    args = parser.parse_args(argv)

    import torch

    from fod.devices import resolve_device
    from fod.io import write_json

    start = time.perf_counter()
    device = resolve_device(args.device)
    report: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "tiny": args.tiny,
    }
    with tempfile.TemporaryDirectory(prefix="fod-gpu-check-") as tmp:
        work = Path(tmp)
        data = args.data
        if data is None and args.tiny:
            from fod.data.synthetic import generate

            generate(work / "data", categories=("tiles",), image_size=64, n_train=8,
                     n_test_good=4, n_test_per_defect=2)  # fmt: skip
            data = work / "data" / "tiles"
        data = data or ROOT.parent / "shared" / "datasets" / "mtd"
        print("[gpu_check] equivalence tests ...", file=sys.stderr, flush=True)
        report["equivalence"] = _equivalence(str(device), args.tiny)
        print(f"[gpu_check]   {report['equivalence']['summary']}", file=sys.stderr, flush=True)
        report["bench_step"] = _bench_step(str(device), args.tiny)
        left = TOTAL_BUDGET_S - (time.perf_counter() - start) - 60.0  # features and test
        budget = args.train_budget or (1.0 if args.tiny else max(30.0, min(360.0, left)))
        print(f"[gpu_check] training on {data} for {budget:.0f} s ...", file=sys.stderr)
        report["train"] = _train(data, str(device), args.precision, budget, args.tiny, work)
    report["seconds"] = time.perf_counter() - start
    write_json(args.out, report)
    print(f"[gpu_check] wrote {args.out} ({report['seconds']:.0f} s)", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
