"""benchmarks/gpu_check.sh in its CPU smoke-test mode, so the GPU check cannot rot unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_parts_and_writes_one_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    src = str(ROOT / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny"]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert (report["device"], report["tiny"]) == ("cpu", True)

    eq = report["equivalence"]
    assert eq["ok"] and eq["failed"] == 0 and eq["passed"] >= 3, eq

    cases = {(r["path"], r["batch"]): r for r in report["bench_step"]["results"]}
    assert set(cases) == {("fast", 1), ("direct", 1), ("fast", 8), ("direct", 8)}
    for case in cases.values():
        assert case["skipped"] is None and case["device"] == "cpu"
        assert case["train_images_per_s"] == pytest.approx(case["batch"] / case["train_step_s"])

    train = report["train"]
    assert train["epochs"] == len(train["epoch_seconds"]) >= 1
    assert train["config"]["epochs"] == train["epochs"]
    assert (train["train_images"], train["test_images"]) == (8, 12)
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= train["metrics"][key] <= 1.0
