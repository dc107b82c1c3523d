"""`fod bench step`: time and memory of one training step and one test image, fast vs direct.

Each measurement runs in its own Python process, so its peak memory is its own. The default
configuration is the authors' (input 256 with WideResNet-50-2 features): a 32x32 level with
C = 512, d_model = 256 and a 16x16 level with C = 1024, d_model = 512; 8 heads, 3 layers, the
full model, Adam. A training step is: forward of both levels, the objective, the backward
pass(es) and one optimiser step. A test image is: forward of both levels and the per-token
scores (the backbone is excluded, as in the calibration figures of the spec).

Memory is reported twice: the whole process's peak resident set (``peak_rss_mb``, which
includes about 0.7 GB that importing a CUDA build of torch costs before any work), and the
growth of the peak over the resident set measured just before the first step, after the
models and the optimiser exist (``step_peak_mb``: what the step itself needs).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

AUTHORS_LEVELS = ((512, 32, 32, 256), (1024, 16, 16, 512))
TINY_LEVELS = ((16, 8, 6, 32), (24, 4, 3, 32))


@dataclass
class Case:
    path: str
    batch: int
    levels: tuple[tuple[int, int, int, int], ...] = AUTHORS_LEVELS
    heads: int = 8
    layers: int = 3
    repeats: int = 3
    seed: int = 0
    device: str = "cpu"


@dataclass
class CaseResult:
    path: str
    batch: int
    train_step_s: float | None = None
    train_images_per_s: float | None = None
    test_image_s: float | None = None
    peak_rss_mb: float | None = None
    baseline_rss_mb: float | None = None
    step_peak_mb: float | None = None
    threads: int | None = None
    device: str | None = None
    cuda_peak_mb: float | None = None
    skipped: str | None = None
    train_step_all_s: list[float] = field(default_factory=list)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(case: Case) -> CaseResult:
    """Measure one case in this process (called inside the worker process)."""
    import torch

    from fod.model import FODTransformer, LevelSpec, Variant, fod_objective
    from fod.model.direct import direct_scores, direct_train_step

    device = torch.device(case.device)
    torch.manual_seed(case.seed)
    models, features = [], []
    for channels, height, width, d_model in case.levels:
        spec = LevelSpec(channels, height, width, d_model, case.heads, case.layers)
        reference = torch.randn(1, channels, height, width)
        models.append(FODTransformer(spec, Variant(), reference).to(device))
        features.append(torch.randn(case.batch, channels, height, width).to(device))

    def sync() -> None:  # CUDA runs asynchronously: wait before reading the clock
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    params = [p for m in models for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def train_step() -> None:
        optimizer.zero_grad()
        for model, x in zip(models, features, strict=True):
            if case.path == "fast":
                fod_objective(model(x), model.variant).total.backward()
            else:
                direct_train_step(model, x)
        optimizer.step()

    def test_pass() -> None:
        with torch.no_grad():
            for model, x in zip(models, features, strict=True):
                if case.path == "fast":
                    model.score(x)
                else:
                    direct_scores(model, x)

    baseline = _current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(case.repeats + 1):  # the first step warms up and is not counted
        sync()
        start = time.perf_counter()
        train_step()
        sync()
        times.append(time.perf_counter() - start)
    step = statistics.median(times[1:])
    test_times = []
    for _ in range(case.repeats + 1):
        sync()
        start = time.perf_counter()
        test_pass()
        sync()
        test_times.append(time.perf_counter() - start)
    test = statistics.median(test_times[1:]) / case.batch
    peak = _peak_rss_mb()
    return CaseResult(
        case.path,
        case.batch,
        train_step_s=step,
        train_images_per_s=case.batch / step,
        test_image_s=test,
        peak_rss_mb=peak,
        baseline_rss_mb=baseline,
        step_peak_mb=peak - baseline,
        threads=torch.get_num_threads(),
        device=str(device),
        cuda_peak_mb=(
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        train_step_all_s=times,
    )


def _run_in_subprocess(case: Case, timeout: float) -> CaseResult:
    cmd = [sys.executable, "-m", "fod.bench.step", "--worker", json.dumps(asdict(case))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return CaseResult(case.path, case.batch, skipped=f"did not finish within {timeout:.0f} s")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        reason = "killed (out of memory?)" if proc.returncode < 0 else " | ".join(tail)
        return CaseResult(case.path, case.batch, skipped=f"worker failed: {reason}")
    return CaseResult(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _available_memory_mb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("inf")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def run_benchmark(
    batches: tuple[int, ...] = (1, 8),
    paths: tuple[str, ...] = ("fast", "direct"),
    levels: tuple[tuple[int, int, int, int], ...] = AUTHORS_LEVELS,
    heads: int = 8,
    layers: int = 3,
    repeats: int = 3,
    timeout: float = 1800.0,
    log=print,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run every (path, batch) case in its own process and compute the ratios."""
    results: list[CaseResult] = []
    for batch in batches:
        by_path: dict[str, CaseResult] = {}
        for path in paths:
            case = Case(path, batch, tuple(levels), heads, layers, repeats, device=device)
            skip = None
            direct1 = next((r for r in results if r.path == "direct" and r.batch == 1), None)
            if path == "direct" and batch > 1 and direct1 and direct1.step_peak_mb:
                need = direct1.baseline_rss_mb + direct1.step_peak_mb * batch
                if need > 0.9 * _available_memory_mb():
                    skip = (
                        f"not run: about {need / 1024:.1f} GB needed (batch-1 step memory x "
                        f"{batch}), {_available_memory_mb() / 1024:.1f} GB available"
                    )
            log(f"[bench] {path} path, batch {batch} ...")
            result = (
                CaseResult(path, batch, skipped=skip) if skip else _run_in_subprocess(case, timeout)
            )
            log(f"[bench]   {_describe(result)}")
            results.append(result)
            by_path[path] = result
    ratios = {}
    for batch in batches:
        fast = next((r for r in results if r.path == "fast" and r.batch == batch), None)
        direct = next((r for r in results if r.path == "direct" and r.batch == batch), None)
        if fast and direct and not fast.skipped and not direct.skipped:
            ratios[f"batch{batch}"] = {
                "train_speedup": _ratio(direct.train_step_s, fast.train_step_s),
                "memory_reduction": _ratio(direct.step_peak_mb, fast.step_peak_mb),
                "memory_reduction_total_rss": _ratio(direct.peak_rss_mb, fast.peak_rss_mb),
                "test_speedup": _ratio(direct.test_image_s, fast.test_image_s),
            }
    return {
        "config": {
            "levels": [
                dict(zip(("channels", "height", "width", "d_model"), lv, strict=True))
                for lv in levels
            ],
            "heads": heads,
            "layers": layers,
            "repeats": repeats,
            "device": device,
            "memory": "step_peak_mb = peak RSS - RSS before the first step; "
            "peak_rss_mb = whole process",
        },
        "machine": _machine(),
        "results": [asdict(r) for r in results],
        "ratios": ratios,
    }


def _machine() -> dict[str, Any]:
    import platform

    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _describe(r: CaseResult) -> str:
    if r.skipped:
        return f"skipped: {r.skipped}"
    return (
        f"train step {r.train_step_s:.3f} s, test image {r.test_image_s:.3f} s, "
        f"peak RSS {r.peak_rss_mb:.0f} MB (step {r.step_peak_mb:.0f} MB)"
    )


def format_table(report: dict[str, Any]) -> str:
    lines = [
        "| path | batch | train step (s) | train images/s | test image (s) "
        "| step peak (MB) | process peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if r["skipped"]:
            lines.append(f"| {r['path']} | {r['batch']} | {r['skipped']} | | | | |")
            continue
        lines.append(
            f"| {r['path']} | {r['batch']} | {_fmt(r['train_step_s'], '.3f')} "
            f"| {_fmt(r['train_images_per_s'], '.2f')} | {_fmt(r['test_image_s'], '.4f')} "
            f"| {_fmt(r['step_peak_mb'], '.0f')} | {_fmt(r['peak_rss_mb'], '.0f')} |"
        )
    for name, ratio in report["ratios"].items():
        lines.append("")
        lines.append(
            f"{name}: train {_fmt(ratio['train_speedup'], '.1f')}x faster, step memory "
            f"{_fmt(ratio['memory_reduction'], '.1f')}x lower (whole process "
            f"{_fmt(ratio['memory_reduction_total_rss'], '.1f')}x), test "
            f"{_fmt(ratio['test_speedup'], '.1f')}x faster"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        data = json.loads(argv[1])
        data["levels"] = tuple(tuple(lv) for lv in data["levels"])
        print(json.dumps(asdict(run_case(Case(**data)))))
        return
    raise SystemExit("usage: python -m fod.bench.step --worker CASE_JSON (run `fod bench step`)")


if __name__ == "__main__":
    main()
