"""Safe file writes: a crash or Ctrl-C never leaves a half-written result behind, an output
never replaces an input, and a write that fails says why in one line.

Every file the package writes (checkpoints, feature caches, tables, images) goes through
:func:`atomic_write`, which writes to a temporary file in the same folder and renames it into
place. The new file gets the mode a plain ``open(path, "w")`` would give it (``0666`` less the
umask), or keeps the mode of the file it replaces. Commands call :func:`check_writable` on
every output before any expensive step, and :func:`check_not_input` so that no output is one
of the command's inputs. Any ``OSError`` while writing becomes an
:class:`~fod.errors.OutputError` naming the path and the cause.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import pickletools
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from fod.errors import OutputError

#: Suffixes of the files fod reads as images (lower case). Defined here, below the data
#: package that lists folders by them, because an output among input images is refused here.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

# ------------------------------------------------------------------------ errors in words

_CAUSES: dict[int, tuple[str, str]] = {
    errno.EACCES: (
        "permission denied",
        "Choose a folder you can write to, or change its permissions.",
    ),
    errno.EPERM: (
        "operation not permitted",
        "Choose a folder you can write to, or change its permissions.",
    ),
    errno.EROFS: ("read-only file system", "Write to another disk or folder."),
    errno.ENOSPC: ("no space left on the device", "Free some space, or write to another disk."),
    errno.EDQUOT: ("disk quota exceeded", "Free some space, or write to another disk."),
    errno.EISDIR: ("it is a folder", "Give a file name, not a folder."),
    errno.ENAMETOOLONG: ("the name is too long", "Choose a shorter output path."),
}


def _file_in_the_way(path: Path) -> Path | None:
    """The first ancestor of ``path`` that exists and is not a folder, if any."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """One line for a failed write: the path, the cause in words, and the fix."""
    path = Path(path)
    blocker = _file_in_the_way(path)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and blocker is not None:
        cause = f"{blocker} is a file, not a folder"
        fix = "Choose another output path."
    elif exc.errno in _CAUSES:
        cause, fix = _CAUSES[exc.errno]  # type: ignore[index]
    else:
        cause, fix = (exc.strerror or type(exc).__name__).lower(), "Choose another output path."
    return OutputError(f"{path}: cannot write ({cause}). {fix}")


# ------------------------------------------------------------------------------- modes


def _umask() -> int:
    try:  # Linux: read it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: str | Path) -> int:
    """The mode for writing ``path``: the existing file's, else ``0666`` less the umask."""
    try:
        st = os.stat(path)
    except OSError:
        return 0o666 & ~_umask()
    return st.st_mode & 0o7777


# ------------------------------------------------------------------------------- checks


def ensure_folder(path: str | Path) -> Path:
    """``mkdir -p``, with a one-line :class:`OutputError` instead of an ``OSError``."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file where the folder should be
        blocker = path if path.exists() else _file_in_the_way(path)
        raise OutputError(
            f"{path}: cannot write ({blocker} is a file, not a folder). Choose another output path."
        ) from exc
    except OSError as exc:
        raise output_error(path, exc) from exc
    return path


def check_writable(path: str | Path, *, folder: bool = False) -> Path:
    """Refuse an output that cannot be written, before any expensive work.

    ``path`` is a file to write (or, with ``folder=True``, a folder to write into). Nothing is
    created: a probe file is made and removed in the nearest existing folder, which also
    catches what permission bits do not show (read-only mounts, immutable folders, root).
    """
    path = Path(path).expanduser()
    if folder:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{path}: is a file, not a folder. Give a folder to write into.")
        where = path
    else:
        if path.is_dir():
            raise OutputError(f"{path}: is a folder. Give a file name, like {path / 'out'}.")
        where = path.parent
    while not where.exists() and where != where.parent:
        if where.is_symlink():  # a dangling link: mkdir would fail on it
            raise OutputError(f"{where}: is a broken symbolic link. Choose another output path.")
        where = where.parent
    blocker = _file_in_the_way(path / "x" if folder else path)
    if blocker is not None:
        raise OutputError(
            f"{path}: cannot write ({blocker} is a file, not a folder). Choose another output path."
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".fod-probe.", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(path, exc) from exc
    return path


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (links resolved)."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_not_input(output: str | Path, inputs: Iterable[str | Path], what: str = "") -> None:
    """Refuse to write ``output`` when it is one of ``inputs`` (links resolved): writing it
    would destroy the input. An input folder stands for the images in it."""
    output = Path(output).expanduser()
    name = f" ({what})" if what else ""
    for item in inputs:
        item = Path(item).expanduser()
        if item.is_dir():
            inside = output.resolve().is_relative_to(item.resolve())
            if not (inside and output.is_file() and output.suffix.lower() in IMAGE_EXTENSIONS):
                continue
        elif not same_file(output, item):
            continue
        raise OutputError(
            f"{output}: this output is also an input{name}; writing it would destroy the "
            "input. Choose another output path."
        )


def check_outside(output: str | Path, folder: str | Path, what: str) -> None:
    """Refuse an output folder that is ``folder`` (an input folder) or lies inside it: what it
    writes would replace the inputs or be read as inputs by the next run."""
    output, folder = Path(output).expanduser(), Path(folder).expanduser()
    if folder.is_dir() and output.resolve().is_relative_to(folder.resolve()):
        raise OutputError(
            f"{output}: lies inside the input folder {folder}, so the {what} written there "
            "would replace or mix with the inputs. Choose a folder outside the inputs."
        )


# ------------------------------------------------------------------------------- writes


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one rename."""
    path = Path(path)
    ensure_folder(path.parent)
    mode = new_file_mode(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        try:
            os.fchmod(fd, mode)
        except OSError:  # a file system without modes (FAT, some network shares)
            pass
        finally:
            os.close(fd)
        write(tmp_path)
        os.replace(tmp_path, path)
    except Exception as exc:
        cause = _os_error_in(exc)
        if cause is None:
            raise
        raise output_error(path, cause) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: writers such as torch's zip writer turn a full disk into
    their own error while the OSError is still being handled."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _strict(obj: Any) -> Any:
    """NaN and infinities become None: JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Strict JSON (``null`` for NaN or infinite numbers, which JSON cannot hold)."""
    text = json.dumps(_strict(obj), indent=2, sort_keys=False, allow_nan=False)
    return write_text(path, text + "\n")


def _torch_save(obj: Any, path: Path) -> None:
    # through a Python file, so that a full disk is an OSError, not a RuntimeError of torch's
    with path.open("wb") as fh:
        torch.save(obj, fh)


def save_tensors(path: str | Path, obj: Any) -> Path:
    """Save plain data (tensors, numbers, strings, lists, dicts) loadable with weights_only."""
    return atomic_write(path, lambda p: _torch_save(obj, p))


# ------------------------------------------------------------------------------- reads


class UnsafeFileError(pickle.UnpicklingError):
    """A file whose pickle would import Python objects (code) to load."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.names = names
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        super().__init__(f"{path}: contains code or objects that fod does not load ({shown})")


#: Modules whose objects a tensor file made by ``torch.save`` of plain data may name.
_SAFE_MODULES = ("torch", "collections", "_codecs", "builtins", "numpy")
_SAFE_NAMES = {"collections.OrderedDict", "_codecs.encode", "builtins.set"}


def _pickle_bytes(path: Path) -> bytes | None:
    """The pickle stream of a torch file (``data.pkl`` of the zip) or of a plain pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                return zf.read(name) if name is not None else None
        return path.read_bytes()
    except (OSError, zipfile.BadZipFile, KeyError, EOFError, ValueError):
        return None


def pickled_globals(path: str | Path) -> list[str]:
    """Python objects (``module.name``) the pickle in ``path`` would import, beyond torch's
    own tensor rebuilding; empty when there are none or no pickle can be read."""
    data = _pickle_bytes(Path(path))
    if not data:
        return []
    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # a damaged stream: what was read so far still counts
        pass
    unsafe = [
        n
        for n in dict.fromkeys(names)
        if n not in _SAFE_NAMES and n.split(".")[0] not in _SAFE_MODULES
    ]
    return unsafe


def load_tensors(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`save_tensors` without executing any pickled code.

    A file whose pickle would import other Python objects raises :class:`UnsafeFileError`,
    whatever torch's own wording of the refusal.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        names = pickled_globals(path)
        if names or "global" in str(exc).lower():
            raise UnsafeFileError(path, names or ["unknown"]) from None
        raise


def stamp_problem(data: Any, fmt: str, version: int) -> str | None:
    """Why ``data`` (read by :func:`load_tensors`) is not a payload stamped ``{"format": fmt,
    "version": version}``: ``"format"`` (not a dict with that marker), ``"version"`` (that
    marker, another version), or None when it is. Each reader words its own refusal."""
    if not isinstance(data, dict) or data.get("format") != fmt:
        return "format"
    if data.get("version") != version:
        return "version"
    return None


# ------------------------------------------------------------------------------- sets


class OutputSet:
    """The files of one run, moved into ``folder`` together: no mix with an earlier run's.

    Entries (``names``: files or folders directly in ``folder``) are written below
    :meth:`path`, in a hidden staging folder beside them. :meth:`commit` replaces the earlier
    run's entries of those names as a whole (an entry this run did not write is removed, so
    none is left over from before) and keeps the modes of replaced files; :meth:`discard`, or
    leaving the ``with`` block by an exception, leaves the earlier run's files untouched.
    """

    def __init__(self, folder: str | Path, names: Iterable[str]) -> None:
        self.folder = ensure_folder(folder)
        self.names = list(names)
        try:
            self.stage = Path(tempfile.mkdtemp(prefix=".fod-run.", dir=self.folder))
        except OSError as exc:
            raise output_error(self.folder, exc) from exc

    def path(self, name: str) -> Path:
        """Where to write entry ``name`` (or a file inside it) during the run."""
        return self.stage / name

    def final(self, name: str) -> Path:
        """Where entry ``name`` lies after :meth:`commit`."""
        return self.folder / name

    def commit(self) -> None:
        try:
            old = Path(tempfile.mkdtemp(prefix=".fod-old.", dir=self.folder))
            for name in self.names:
                target, new = self.folder / name, self.stage / name
                if target.is_file() and new.is_file():
                    os.chmod(new, target.stat().st_mode & 0o7777)
                if target.exists() or target.is_symlink():
                    os.replace(target, old / name)
            for name in self.names:
                if (self.stage / name).exists():
                    os.replace(self.stage / name, self.folder / name)
        except OSError as exc:
            raise output_error(self.folder, exc) from exc
        shutil.rmtree(old, ignore_errors=True)
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()
