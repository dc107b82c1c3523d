"""Bad inputs and hostile environments: outputs never destroy inputs, writes fail in one line
before the expensive work, NaN never ships, and predict scores what it can.

Every case runs the real ``fod`` command on a corpus built here in tmp folders and checks the
exit code, the one-line message (no traceback) and that no input or earlier output changed.
Read-only folders are made with ``chattr +i`` (permission bits do not stop root, which runs
CI) and a full disk with a tiny tmpfs; each case that cannot make them here is skipped with
its reason.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import fod
from fod.api import FOD
from fod.cli.common import EXIT_PARTIAL
from fod.cli.main import main
from fod.data import load_category, synthetic
from fod.errors import CheckpointError, OutputError
from fod.io import atomic_write, check_writable, save_tensors, write_json, write_text

S = 64
TINY = [
    *("--image-size", str(S), "--epochs", "1", "--d-model", "16", "16"),
    *("--heads", "2", "--num-layers", "1", "--batch-size", "4", "--quiet", "--device", "cpu"),
]
OPTIONS = dict(image_size=S, epochs=1, d_model=(16, 16), heads=2, num_layers=1, batch_size=4)


# --------------------------------------------------------------------------------- helpers


def snapshot(*roots: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mode of every file below ``roots`` (files or folders)."""
    found: dict[str, tuple[bytes, int]] = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            found[str(p)] = (p.read_bytes(), p.stat().st_mode & 0o7777)
    return found


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error(err: str) -> str:
    """The single ``error:`` line of ``err`` (and nothing that looks like a traceback)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def no_expensive_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any backbone run, model load or evaluation fail the test: a refusal must come
    first."""

    def fail(*args, **kwargs):
        raise AssertionError("expensive work started before the outputs were checked")

    monkeypatch.setattr(FOD, "features", fail)
    monkeypatch.setattr(FOD, "load", fail)
    monkeypatch.setattr(FOD, "test", fail)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("safety_data")
    synthetic.generate(
        root, ["board"], image_size=S, n_train=8, n_test_good=2, n_test_per_defect=1, seed=0
    )
    return root / "board"


@pytest.fixture(scope="module")
def model(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("safety_model") / "model.pt"
    assert main(["train", str(data), "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture()
def immutable(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody, root included, can create files in (``chattr +i``)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr is not installed, so no folder can be made read-only for root")
    done = subprocess.run([chattr, "+i", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not allowed here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=False)


@pytest.fixture()
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (room for one tiny model); the test fills it."""
    mount = shutil.which("mount")
    folder = tmp_path / "tiny"
    folder.mkdir()
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Write until the file system is full."""
    try:
        with (folder / "filler").open("wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC


# ------------------------------------------------------------ 1. outputs never replace inputs


def test_an_output_that_is_an_input_is_refused(
    model: Path,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = snapshot(model, data)
    no_expensive_work(monkeypatch)
    image = data / "train" / "good" / "000.png"
    link = tmp_path / "link.pt"
    link.symlink_to(model)
    cases = [
        ("test", model, data, "--json", model),
        ("test", model, data, "--json", link),  # the same file through a link
        ("test", model, data, "--json", data / "test" / "good" / "000.png"),
        ("export", model, "--out", model),
        ("export", model, "--out", link),
        ("train", data, "--out", image, *TINY),
        ("train", data, "--out", image, "--force", *TINY),  # --force never destroys an input
        ("predict", model, data / "test", "--out", data / "test" / "good"),
        ("test", model, data, "--report", data / "test"),  # panels named like the test images
    ]
    for args in cases:
        rc, _, err = run(capsys, *args)
        assert rc == 2, args
        line = one_error(err)
        assert any(w in line for w in ("is also an input", "holds an input", "inside the input"))
    monkeypatch.undo()
    with pytest.raises(OutputError, match="inside the input folder"):
        FOD.load(model, device="cpu", progress=False).test(data, report_dir=data / "test")
    # predict into a folder whose heatmaps/ holds the images being predicted
    heat = tmp_path / "out" / "heatmaps"
    shutil.copytree(data / "test" / "good", heat)
    args = ("predict", model, heat / "000.png", "--out", tmp_path / "out", "--quiet")
    rc, _, err = run(capsys, *args)
    assert rc == 2 and "holds an input" in one_error(err)
    rc, _, err = run(capsys, "predict", model, heat, "--out", tmp_path / "out", "--quiet")
    assert rc == 2 and "inside the input folder" in one_error(err)
    assert sorted(p.name for p in heat.iterdir()) == ["000.png", "001.png"]
    assert snapshot(model, data) == before


def test_a_model_never_replaces_a_file_that_is_not_a_model(
    model: Path,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notes = tmp_path / "notes.pt"
    notes.write_text("my notes\n")
    with monkeypatch.context() as m:
        no_expensive_work(m)
        rc, _, err = run(capsys, "train", data, "--out", notes, *TINY)
        assert rc == 2 and "--force" in one_error(err) and "not a fod model" in err
        rc, _, err = run(capsys, "export", model, "--out", notes)
        assert rc == 2 and "--force" in one_error(err) and "not an ONNX file" in err
    assert notes.read_text() == "my notes\n"
    # the Python API says it in its own words
    with pytest.raises(OutputError, match="force=True"):
        FOD.load(model, device="cpu", progress=False).save(notes)
    assert notes.read_text() == "my notes\n"
    # replacing an earlier model is fine, and --force replaces anything
    assert run(capsys, "train", data, "--out", notes, "--force", *TINY)[0] == 0
    assert fod.training.read_model_file(notes)["format"] == "fod-model"


# ------------------------------------------------ 2. unwritable outputs: one line, before work


def test_outputs_below_a_file_are_refused_before_any_work(
    model: Path,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    below = blocker / "sub"
    no_expensive_work(monkeypatch)
    cases = [
        ("train", data, "--out", below / "m.pt", *TINY),
        ("train", data, "--out", tmp_path / "m.pt", "--cache", below, *TINY),
        ("test", model, data, "--json", below / "r.json"),
        ("test", model, data, "--report", below),
        ("predict", model, data / "test", "--out", below),
        ("generate", below),
        ("export", model, "--out", below / "m.onnx"),
        ("benchmark", data.parent, "--out", below, *TINY),
        ("benchmark", data.parent, "--out", tmp_path / "b", "--json", below / "b.json", *TINY),
        ("ablate", data, "--out", below, *TINY),
    ]
    for args in cases:
        rc, _, err = run(capsys, *args)
        assert rc == 2, args
        line = one_error(err)
        assert f"{blocker} is a file, not a folder" in line, line
    assert blocker.read_text() == "x"
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "b").exists()


def test_a_read_only_folder_is_refused_before_any_work(
    model: Path,
    data: Path,
    immutable: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_expensive_work(monkeypatch)
    cases = [
        ("train", data, "--out", immutable / "m.pt", *TINY),
        ("test", model, data, "--json", immutable / "r.json"),
        ("predict", model, data / "test", "--out", immutable / "pred"),
        ("generate", immutable / "gen"),
    ]
    for args in cases:
        rc, _, err = run(capsys, *args)
        assert rc == 2, args
        assert "cannot write (operation not permitted)" in one_error(err), err
    assert list(immutable.iterdir()) == []


def test_permission_bits_are_reported(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("permission bits do not stop root; the chattr test covers this case")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="permission denied"):
        check_writable(folder / "m.pt")
    with pytest.raises(OutputError, match="permission denied"):
        write_text(folder / "a.txt", "x")


def test_a_full_disk_is_one_line_and_keeps_the_old_model(
    model: Path, data: Path, full_disk: Path, capsys: pytest.CaptureFixture
) -> None:
    target = full_disk / "model.pt"
    shutil.copy(model, target)
    fill(full_disk)
    before = snapshot(target)
    rc, _, err = run(capsys, "train", data, "--out", target, *TINY)
    assert rc == 2
    line = one_error(err)
    assert "no space left on the device" in line and "unexpected pos" not in line
    assert snapshot(target) == before
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "model.pt"]  # no temp files
    with pytest.raises(OutputError, match="no space left"):
        write_json(full_disk / "r.json", {"x": list(range(10000))})


def test_os_errors_while_writing_become_one_line(tmp_path: Path) -> None:
    def no_space(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as err:
        atomic_write(tmp_path / "x.bin", no_space)
    assert str(err.value) == (
        f"{tmp_path / 'x.bin'}: cannot write (no space left on the device). Free some space, "
        "or write to another disk."
    )
    assert list(tmp_path.iterdir()) == []

    def wrapped(path: Path) -> None:  # as torch's zip writer does on a full disk
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        finally:
            raise RuntimeError("unexpected pos 64 vs 0")

    with pytest.raises(OutputError, match="no space left"):
        atomic_write(tmp_path / "y.bin", wrapped)


# ------------------------------------------------------------------------ 3. NaN never ships


def test_training_that_diverges_stops_with_epoch_step_and_lr(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "m.pt"
    rc, _, err = run(capsys, "train", data, "--out", out, *TINY, "--epochs", "3", "--lr", "1e5")
    assert rc == 2
    line = one_error(err)
    assert "training diverged at epoch" in line and ", step " in line
    assert "--lr is 100000" in line and "lr=" not in line
    assert not out.exists()
    with pytest.raises(fod.errors.TrainingError, match=r"\(lr is 100000"):
        FOD(device="cpu", progress=False, **{**OPTIONS, "epochs": 3, "lr": 1e5}).fit(data)


def test_non_finite_models_are_neither_written_nor_read(
    model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = torch.load(model, weights_only=True)
    weights = raw["levels"][0]["state_dict"]
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    bad_weight = save_tensors(tmp_path / "nan_weight.pt", raw)
    raw = torch.load(model, weights_only=True)
    raw["threshold"] = float("nan")
    bad_threshold = save_tensors(tmp_path / "nan_threshold.pt", raw)
    for path, words in ((bad_weight, "non-finite weights"), (bad_threshold, "threshold is nan")):
        rc, _, err = run(capsys, "predict", path, data / "test", "--quiet")
        assert rc == 2 and words in one_error(err)
        rc, _, err = run(capsys, "export", path, "--out", tmp_path / "x.onnx")
        assert rc == 2 and words in one_error(err)
    assert not (tmp_path / "x.onnx").exists()

    loaded = FOD.load(model, device="cpu", progress=False)
    loaded.threshold = float("inf")
    with pytest.raises(fod.errors.TrainingError, match="not written"):
        loaded.save(tmp_path / "inf.pt")
    assert not (tmp_path / "inf.pt").exists()


def test_threshold_must_be_finite(model: Path, data: Path, capsys: pytest.CaptureFixture) -> None:
    for value in ("nan", "inf", "-inf"):
        rc, _, err = run(capsys, "predict", model, data / "test", f"--threshold={value}")
        assert rc == 2 and "--threshold: must be a finite number" in err
    with pytest.raises(fod.config.ConfigError, match="finite"):
        FOD(threshold=float("nan"))
    with pytest.raises(fod.config.ConfigError, match="finite"):
        FOD.load(model, device="cpu", progress=False).predict(data / "test", threshold=float("nan"))


def test_json_outputs_are_strict(tmp_path: Path) -> None:
    path = write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")]})

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"a": None, "b": [1.0, None]}


# ----------------------------------------------------------------- 4. predict on a bad folder


def bad_folder(data: Path, root: Path) -> tuple[Path, dict[str, str]]:
    """Two readable images and four that cannot be read, with the words of each reason."""
    folder = root / "incoming"
    folder.mkdir()
    for name in ("000.png", "001.png"):
        shutil.copy(data / "test" / "good" / name, folder / name)
    (folder / "junk.png").write_bytes(b"not an image at all")
    (folder / "empty.png").write_bytes(b"")
    good = (data / "test" / "good" / "000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "dangling.png").symlink_to(root / "gone.png")
    reasons = {
        "junk.png": "not a readable image",
        "empty.png": "empty (0 bytes)",
        "truncated.png": "truncated",
        "dangling.png": "broken symbolic link",
    }
    return folder, reasons


def test_predict_scores_every_readable_image_and_lists_the_rest(
    model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder, reasons = bad_folder(data, tmp_path)
    out = tmp_path / "pred"
    rc, printed, err = run(capsys, "predict", model, folder, "--out", out, "--quiet")
    assert rc == EXIT_PARTIAL == 3
    assert "Traceback" not in err
    assert "4 of 6 images could not be read and were skipped" in printed
    assert "of 2 images anomalous" in printed
    with (out / "predictions.csv").open() as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert set(rows) == {"000.png", "001.png", *reasons}
    for name in ("000.png", "001.png"):
        assert rows[name]["error"] == "" and float(rows[name]["score"]) > 0
        assert Path(rows[name]["heatmap"]).is_file()
    for name, words in reasons.items():
        assert words in rows[name]["error"] and rows[name]["score"] == ""
        assert f"skipped: {folder / name}" in err
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["000.png", "001.png"]

    rc, _, _ = run(capsys, "predict", model, folder, "--out", out, "--format", "json", "--quiet")
    assert rc == 3
    payload = json.loads((out / "predictions.json").read_text())
    assert len(payload["predictions"]) == 2
    assert {Path(u["path"]).name for u in payload["unreadable"]} == set(reasons)
    assert not (out / "predictions.csv").exists()  # no file of the earlier run is left over

    # all readable: exit code 0; the earlier run's heat maps of other images are gone
    rc, _, _ = run(capsys, "predict", model, folder / "000.png", "--out", out, "--quiet")
    assert rc == 0
    assert [p.name for p in (out / "heatmaps").iterdir()] == ["000.png"]
    assert not (out / "predictions.json").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_predict_strict_stops_and_keeps_the_earlier_run(
    model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder, _ = bad_folder(data, tmp_path)
    out = tmp_path / "pred"
    assert run(capsys, "predict", model, data / "test", "--out", out, "--quiet")[0] == 0
    before = snapshot(out)
    rc, _, err = run(capsys, "predict", model, folder, "--out", out, "--strict", "--quiet")
    assert rc == 2 and str(folder) in one_error(err)
    assert snapshot(out) == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    # the Python API raises by default and reports through on_error when asked
    loaded = FOD.load(model, device="cpu", progress=False)
    with pytest.raises(fod.errors.DataError):
        loaded.predict(folder)
    skipped: list[Path] = []
    preds = loaded.predict(folder, on_error=lambda p, e: skipped.append(p))
    assert len(preds) == 2 and len(skipped) == 4


# --------------------------------------------------------------------------------- 5. modes


def test_outputs_follow_the_umask_and_keep_a_replaced_files_mode(
    model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    old = os.umask(0o027)
    try:
        made = write_text(tmp_path / "new.txt", "x")
        assert made.stat().st_mode & 0o777 == 0o640
        out = tmp_path / "pred"
        assert run(capsys, "predict", model, data / "test", "--out", out, "--quiet")[0] == 0
        assert (out / "predictions.csv").stat().st_mode & 0o777 == 0o640
        assert (out / "heatmaps").stat().st_mode & 0o777 == 0o750
        assert all(p.stat().st_mode & 0o777 == 0o640 for p in (out / "heatmaps").iterdir())
        shared = tmp_path / "shared.pt"
        shutil.copy(model, shared)
        shared.chmod(0o644)
        os.umask(0o077)
        FOD.load(model, device="cpu", progress=False).save(shared)
        assert shared.stat().st_mode & 0o777 == 0o644  # still readable by the web server
        assert run(capsys, "predict", model, data / "test", "--out", out, "--quiet")[0] == 0
        assert (out / "predictions.csv").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


# -------------------------------------------------------- 6. fixes in the interface's words


def test_messages_name_the_fix_of_the_interface(
    model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    no_mask = tmp_path / "board"
    shutil.copytree(data, no_mask)
    for mask in (no_mask / "ground_truth").rglob("*.png"):
        mask.unlink()
    rc, _, err = run(capsys, "test", model, no_mask, "--quiet")
    line = one_error(err)
    assert rc == 2 and "--allow-missing-masks" in line and "require_masks" not in line
    with pytest.raises(fod.errors.DataError, match="require_masks=False"):
        load_category(no_mask)
    rc, printed, _ = run(capsys, "test", model, no_mask, "--allow-missing-masks", "--quiet")
    assert rc == 0 and "pixel_auroc n/a" in printed

    no_test = tmp_path / "no_test"
    shutil.copytree(data, no_test)
    shutil.rmtree(no_test / "test")
    rc, _, err = run(capsys, "test", model, no_test, "--quiet")
    assert rc == 2 and "require_test" not in one_error(err) and "test/" in err
    with pytest.raises(fod.errors.DataError, match="require_test=False"):
        load_category(no_test)

    wrong = tmp_path / "wrong_mask"
    shutil.copytree(data, wrong)
    mask = next((wrong / "ground_truth").rglob("*.png"))
    from PIL import Image

    Image.new("L", (S // 2, S // 2)).save(mask)
    rc, _, err = run(capsys, "test", model, wrong, "--quiet")
    assert rc == 2 and "resize=True" not in one_error(err) and "re-export the mask" in err

    rc, _, err = run(capsys, "test", model, data, "--image-size", "128")
    assert rc == 2 and "Leave out --image-size" in one_error(err)
    with pytest.raises(CheckpointError, match="Leave out image_size"):
        FOD.load(model, image_size=128)


# ---------------------------------------------------------------------- 7. hostile pickles


class Hostile:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_hostile_pickles_are_reported_plainly(
    model: Path,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    zipped = tmp_path / "zipped.pt"
    torch.save({"format": "fod-model", "x": Hostile()}, zipped)
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps(Hostile(), protocol=4))
    for path in (zipped, plain):
        rc, _, err = run(capsys, "predict", path, data / "test")
        line = one_error(err)
        assert rc == 2 and "contains code or objects that fod does not load" in line
        assert "weights_only" not in line and "posix.system" in line

    # torch's wording does not matter: the file itself is read
    real_load = torch.load

    def reworded(*args, **kwargs):
        try:
            return real_load(*args, **kwargs)
        except pickle.UnpicklingError:
            raise pickle.UnpicklingError("some future wording") from None

    with monkeypatch.context() as m:
        m.setattr(torch, "load", reworded)
        rc, _, err = run(capsys, "test", zipped, data)
        assert rc == 2 and "contains code or objects that fod does not load" in one_error(err)

    from fod.backbone.extractor import _read_state_dict

    with pytest.raises(fod.errors.BackboneError) as err:  # a --weights file
        _read_state_dict(zipped)
    assert "contains code or objects that fod does not load" in str(err.value)
    assert "weights_only" not in str(err.value)

    out = tmp_path / "m.pt"
    shutil.copy(zipped, tmp_path / "m.state.pt")
    rc, _, err = run(capsys, "train", data, "--out", out, "--resume", *TINY)
    line = one_error(err)
    assert rc == 2 and "contains code or objects that fod does not load" in line
    assert "weights_only" not in line and "Re-running" not in line and not out.exists()


# ------------------------------------------------ 8. Ctrl-C, damaged caches, broken symlinks


def test_ctrl_c_during_feature_extraction_claims_no_state(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self, samples):
        raise KeyboardInterrupt

    monkeypatch.setattr(FOD, "features", interrupted)
    out = tmp_path / "m.pt"
    rc, _, err = run(capsys, "train", data, "--out", out, *TINY)
    assert rc == 130
    assert "nothing was saved" in err and "state.pt" not in err and "--resume" not in err
    assert not out.exists() and not (tmp_path / "m.state.pt").exists()


def test_a_damaged_cache_entry_is_one_warning_line(data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "fod.cli.main", "train", str(data), *TINY, "--cache", str(cache)]
    assert main([*cmd[3:], "--out", str(tmp_path / "a.pt")]) == 0  # fills the cache
    (entry,) = cache.glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:300])
    done = subprocess.run([*cmd, "--out", str(tmp_path / "b.pt")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        f"warning: ignoring the feature cache entry {entry} (unreadable, damaged or truncated "
        "(RuntimeError)); computing the features again"
    ]


def test_a_broken_symlink_among_the_images_is_reported(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    good = tmp_path / "good"
    shutil.copytree(data / "train" / "good", good)
    (good / "zzz.png").symlink_to(tmp_path / "moved_away.png")
    rc, _, err = run(capsys, "train", good, "--out", tmp_path / "m.pt", *TINY)
    line = one_error(err)
    assert rc == 2 and f"{good / 'zzz.png'}: the image file is a broken symbolic link" in line
    category = tmp_path / "cat"
    shutil.copytree(data, category)
    (category / "train" / "good" / "zzz.png").symlink_to(tmp_path / "moved_away.png")
    assert len(load_category(category).train) == len(load_category(data).train) + 1
