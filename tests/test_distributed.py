"""Runs under torchrun: the work split, data-parallel training, and the sharded benchmark.

The multi-process tests start ``torchrun --standalone --nproc-per-node 2`` (gloo on CPU, one
thread per process) on small generated data and compare against one-process runs of the same
commands.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fod import distributed
from fod.config import FODConfig
from fod.data import find_categories
from fod.data.synthetic import generate
from fod.training import read_state, train
from fod.training.trainer import _local_batch

TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY_OPTIONS = [
    "--backbone", "efficientnet_lite0", "--image-size", "64", "--epochs", "1",
    "--d-model", "16", "16", "--heads", "2", "--num-layers", "1", "--batch-size", "4",
    "--device", "cpu", "--quiet",
]  # fmt: skip


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": src if not path else f"{src}{os.pathsep}{path}",
    }


def _fod(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fod", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def _torchrun(*args: str, cwd: Path, module: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "fod", *args] if module else list(args)
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist") / "data"
    return generate(root, image_size=64, n_train=10, n_test_good=4, n_test_per_defect=2)


# ------------------------------------------------------------------------------ work split


def test_balanced_shares_cover_every_item_once_largest_first() -> None:
    sizes = [50, 10, 30, 20, 40, 5, 5]
    for world in (1, 2, 3, 4, 8):
        shares = distributed.balanced_shares(sizes, world)
        assert len(shares) == world
        assert sorted(i for share in shares for i in share) == list(range(len(sizes)))
        assert distributed.balanced_shares(sizes, world) == shares  # a rerun repeats it
    # greedy by hand: 50->r0, 40->r1, 30->r1 (40<50), 20->r0 (50<70), 10->r0/r1 tie at 70 ->
    # r0, 5->r1 (70<80), 5->r1 (75<80)
    assert distributed.balanced_shares(sizes, 2) == [[0, 3, 1], [4, 2, 5, 6]]
    assert distributed.balanced_shares([3, 3], 4) == [[0], [1], [], []]
    with pytest.raises(ValueError, match="at least 1"):
        distributed.balanced_shares(sizes, 0)


def test_shard_range_partitions_in_order() -> None:
    for n in (0, 1, 5, 10, 11):
        for world in (1, 2, 3, 4):
            parts = [distributed.shard_range(n, r, world) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_local_batches_weight_to_the_global_mean() -> None:
    """Rank weights world * rows / batch: sum_r weight_r * mean_r / world = global mean."""
    idx = torch.arange(10, 15)
    values = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0] * 3, dtype=torch.float64)
    for world in (1, 2, 3, 4, 7):
        total, rows_seen = 0.0, []
        for rank in range(world):
            part, rows, weight = _local_batch(idx, distributed.Context(rank, world))
            total += weight * float(values[part].mean()) / world
            rows_seen += part.tolist()[:rows]
        assert rows_seen == idx.tolist()
        assert total == pytest.approx(float(values[idx].mean()), rel=1e-12)


def test_outside_torchrun_everything_is_one_process() -> None:
    ctx, device = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.enabled, device.type) == (0, 1, False, "cpu")
    t = torch.arange(6.0).reshape(3, 2)
    assert distributed.all_gather_rows(t) is t
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    assert distributed.on_main(lambda: 7) == 7


def test_outside_torchrun_exit_process_is_a_plain_exit() -> None:
    with pytest.raises(SystemExit) as exc:
        distributed.exit_process(3)
    assert exc.value.code == 3


def test_outside_torchrun_run_in_group_just_runs_the_work() -> None:
    seen = []
    code = distributed.run_in_group("cpu", lambda ctx, device: seen.append((ctx, device)) or 5)
    assert code == 5
    assert seen == [(distributed.Context(), torch.device("cpu"))]
    with pytest.raises(KeyError, match="boom"):
        distributed.run_in_group("cpu", lambda ctx, device: {}["boom"])


EXIT_SCRIPT = """
import atexit, sys
from fod import distributed

def work(ctx, device):
    atexit.register(lambda: print("finalized", flush=True))
    assert distributed.all_gather_object(ctx.rank) == [0, 1]
    print(f"rank {ctx.rank} done", end="")  # still buffered: stdout is a pipe
    return int(sys.argv[1])

distributed.exit_process(distributed.run_in_group("cpu", work))
"""


@needs_torchrun
def test_a_torchrun_rank_flushes_and_leaves_without_finalization(tmp_path: Path) -> None:
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    run = _ok(_torchrun(str(script), "0", cwd=tmp_path, module=False))
    assert "rank 0 done" in run.stdout and "rank 1 done" in run.stdout
    # interpreter finalization (atexit, then the C++ teardown that aborted ranks) is skipped
    assert "finalized" not in run.stdout
    failed = _torchrun(str(script), "4", cwd=tmp_path, module=False)
    assert failed.returncode != 0
    assert "exitcode  : 4" in failed.stderr + failed.stdout


# ------------------------------------------------------------------------- data parallel


def _relative_differences(a: Path, b: Path) -> tuple[dict[str, float], float, float]:
    """Per-tensor and whole-model relative L2 differences of two model files' weights, key
    biases left out of the whole-model figure, and the largest absolute difference of a key
    bias (see test_two_ranks_train_the_weights_of_one_process for why they are apart)."""
    fa, fb = (torch.load(p, weights_only=True) for p in (a, b))
    per, num, den, key_bias = {}, 0.0, 0.0, 0.0
    for level, (la, lb) in enumerate(zip(fa["levels"], fb["levels"], strict=True)):
        for key, x in la["state_dict"].items():
            x, y = x.double(), lb["state_dict"][key].double()
            per[f"{level}.{key}"] = float((x - y).norm() / x.norm().clamp_min(1e-30))
            if key.endswith("key.bias"):
                key_bias = max(key_bias, float((x - y).abs().max()))
                continue
            num += float(((x - y) ** 2).sum())
            den += float((x**2).sum())
    return per, (num / den) ** 0.5, key_bias


@needs_torchrun
def test_two_ranks_train_the_weights_of_one_process(data: Path, tmp_path: Path) -> None:
    """10 images, global batch 4: ranks get 2+2, 2+2 and 1+1 rows of the three batches."""
    _ok(_fod("train", str(data / "fabric"), "--out", "one.pt", *TINY_OPTIONS, cwd=tmp_path))
    args = ("train", str(data / "fabric"), "--out", "two.pt", *TINY_OPTIONS)
    two = _ok(_torchrun(*args, cwd=tmp_path))
    assert "x 2 processes" in two.stdout
    assert not (tmp_path / "two.state.pt").exists()
    per, overall, key_bias = _relative_differences(tmp_path / "one.pt", tmp_path / "two.pt")
    # A key bias adds the same number to every logit of a softmax row, so its gradient is zero
    # in exact arithmetic and Adam scales rounding noise up to steps of size lr: left out of
    # the relative checks (on one CPU it alone made the whole-model figure 1.03e-5, with every
    # other tensor within 1e-6). Adam moves a weight by at most about lr per step, so two
    # runs part by at most 2 lr per step: 10 images (cross-fitted, so all are trained on) in
    # batches of 4 are 3 steps of lr 1e-3.
    assert overall <= 1e-5
    assert key_bias <= 2 * 3 * 1e-3
    graded = {k: v for k, v in per.items() if not k.endswith("key.bias")}
    assert len(graded) > 20
    assert max(graded.values()) <= 1e-5, max(graded.items(), key=lambda kv: kv[1])
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two_file = torch.load(tmp_path / "two.pt", weights_only=True)
    assert two_file["threshold"] == pytest.approx(one["threshold"], rel=1e-5)
    stats = two_file["stats"]
    assert stats["num_train"] == stats["num_holdout"] == 10  # cross-fitted: all, held out once
    assert (stats["folds"], one["stats"]["folds"]) == (5, 5)
    h1, h2 = one["history"][0], two_file["history"][0]
    for key in ("loss1", "loss2", "rec"):  # the logged means are over all ranks' rows
        assert h2[key] == pytest.approx(h1[key], rel=1e-5)
    # every rank trains the segmenter on the same images; the file holds rank 0's
    seg1, seg2 = one["segmenter"], two_file["segmenter"]
    assert seg1 is not None and seg2 is not None and seg1.keys() == seg2.keys()
    for key, x in seg1.items():
        diff = float((x.double() - seg2[key].double()).norm() / x.double().norm().clamp_min(1e-30))
        assert diff <= 1e-4, (key, diff)


RESUME_SCRIPT = """
import sys, torch
from fod import distributed
from fod.config import FODConfig
from fod.training import train
distributed.setup("cpu")
g = torch.Generator().manual_seed(3)
features = [torch.randn(7, 8, 4, 4, generator=g), torch.randn(7, 12, 2, 2, generator=g)]
config = FODConfig(d_model=(16, 16), heads=2, num_layers=1, epochs=1, batch_size=3, seed=5)
train(config, features, state_path=sys.argv[1], progress=False)
distributed.shutdown()
distributed.exit_process(0)
"""


@needs_torchrun
def test_a_state_from_two_ranks_resumes_in_one_process(tmp_path: Path) -> None:
    script = tmp_path / "first_epoch.py"
    script.write_text(RESUME_SCRIPT)
    state = tmp_path / "state.pt"
    _ok(_torchrun(str(script), str(state), cwd=tmp_path, module=False))
    assert read_state(state)["epoch"] == 1
    g = torch.Generator().manual_seed(3)
    features = [torch.randn(7, 8, 4, 4, generator=g), torch.randn(7, 12, 2, 2, generator=g)]
    config = FODConfig(d_model=(16, 16), heads=2, num_layers=1, epochs=2, batch_size=3, seed=5)
    resumed = train(config, features, state_path=state, resume=True, progress=False)
    straight = train(config, features, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for a, b in zip(resumed.models, straight.models, strict=True):
        for key, x in b.state_dict().items():
            if key.endswith("key.bias"):  # see test_two_ranks_train_the_weights_of_one_process
                continue
            y = a.state_dict()[key]
            assert float((x - y).norm() / x.norm().clamp_min(1e-30)) <= 1e-5, key


# ------------------------------------------------------------------------ sharded benchmark


def _metric_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(f)]


def _without_seconds(obj):
    if isinstance(obj, dict):
        return {k: _without_seconds(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_without_seconds(v) for v in obj]
    return obj


def _assert_same_tables(single: Path, sharded: Path) -> None:
    assert (sharded / "results.md").read_text() == (single / "results.md").read_text()
    assert _metric_rows(sharded / "results.csv") == _metric_rows(single / "results.csv")
    j1, j2 = (json.loads((d / "results.json").read_text()) for d in (single, sharded))
    assert _without_seconds(j2) == _without_seconds(j1)


@needs_torchrun
@pytest.mark.slow
def test_sharded_benchmark_writes_the_one_process_table_and_redoes_a_failed_category(
    data: Path, tmp_path: Path
) -> None:
    _ok(_fod("benchmark", str(data), "--out", "single", *TINY_OPTIONS, cwd=tmp_path))

    # two ranks: every category exactly once, on the rank balanced_shares gives it
    run = _ok(_torchrun("benchmark", str(data), "--out", "sharded", *TINY_OPTIONS, cwd=tmp_path))
    categories = find_categories(data)
    shares = distributed.balanced_shares([len(c.train) + len(c.test) for c in categories], 2)
    for rank, share in enumerate(shares):
        for position, i in enumerate(share, 1):
            line = f"[rank {rank}/2] [{position}/{len(share)}] {categories[i].name}: training"
            assert run.stdout.count(line) == 1, run.stdout
    assert run.stdout.count(": training on") == len(categories)
    _assert_same_tables(tmp_path / "single", tmp_path / "sharded")

    # a rank dies on its second category (an unreadable training image): that category is
    # lost, the finished ones are kept, and the same command again finishes the rest
    rank, share = next((r, s) for r, s in enumerate(shares) if len(s) >= 2)
    victim = categories[share[1]]
    image = victim.train[0].image
    original = image.read_bytes()
    image.write_bytes(b"not an image")
    try:
        failed = _torchrun("benchmark", str(data), "--out", "resumed", *TINY_OPTIONS, cwd=tmp_path)
    finally:
        image.write_bytes(original)
    assert failed.returncode != 0
    assert f"{image}" in failed.stdout + failed.stderr
    out = tmp_path / "resumed"
    assert not (out / "results.md").exists()
    assert not (out / victim.name / "result.json").exists()
    first = categories[share[0]].name
    assert (out / first / "result.json").is_file()
    again = _ok(_torchrun("benchmark", str(data), "--out", "resumed", *TINY_OPTIONS, cwd=tmp_path))
    assert f"{first}: done before, skipped" in again.stdout
    assert f"{victim.name}: training on" in again.stdout
    _assert_same_tables(tmp_path / "single", out)
