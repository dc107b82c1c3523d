"""Data set folder layouts (MVTec AD, BTAD, MVTec 3D-AD RGB) -> :class:`Category` objects.

A category is one product: defect-free training images and labelled test images with their
defect masks. Reading is strict on purpose: a misnamed, empty or incomplete folder raises a
:class:`~fod.errors.DataError` naming the path and the fix, because a silently skipped folder
or a good image labelled as a defect would quietly falsify every metric.

Supported layouts (``<type>`` is a defect type folder, ``<stem>`` an image's name without
extension)::

    mvtec    train/good/*   test/<type>/*   ground_truth/<type>/<stem>_mask.png
    btad     train/ok/*     test/ok/*  test/ko/*   ground_truth/ko/<stem>.png (or .bmp)
    mvtec3d  train/good/rgb/*   test/<type>/rgb/*   test/<type>/gt/<stem>.png
             (xyz/ folders are ignored; validation/ only with include_validation=True)

Order is deterministic: training images sorted by file name; test images grouped by type,
the good type first and the defect types sorted by name, each sorted by file name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fod.errors import DataError, option
from fod.io import IMAGE_EXTENSIONS

__all__ = [
    "GOOD_TYPES",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "Category",
    "Sample",
    "detect_layout",
    "find_categories",
    "image_files",
    "load_category",
    "training_samples",
]

LAYOUTS: tuple[str, ...] = ("mvtec", "btad", "mvtec3d")
GOOD_TYPES: dict[str, str] = {"mvtec": "good", "btad": "ok", "mvtec3d": "good"}

# Lower-cased folder names people use for defect-free images; any of them where the layout
# expects "good" / "ok" is an error, since it would otherwise be read as a defect type.
_GOOD_SYNONYMS = frozenset(
    {
        "good",
        "ok",
        "normal",
        "nominal",
        "defect_free",
        "defect-free",
        "defectfree",
        "non_defective",
        "non-defective",
        "nodefect",
        "no_defect",
        "clean",
        "pass",
        "negative",
    }
)
_TRAIN_SYNONYMS = frozenset({"train", "training", "trainset", "train_set"})
_TEST_SYNONYMS = frozenset({"test", "testing", "testset", "test_set"})
_GT_SYNONYMS = frozenset(
    {"ground_truth", "groundtruth", "ground-truth", "ground truth", "gt", "mask", "masks"}
)
_LAYOUT_HELP = (
    "Supported layouts (one category folder):\n"
    "  mvtec:   train/good/*, test/<type>/*, ground_truth/<type>/<stem>_mask.png\n"
    "  btad:    train/ok/*, test/ok/*, test/ko/*, ground_truth/ko/<stem>.png or .bmp\n"
    "  mvtec3d: train/good/rgb/*, test/<type>/rgb/*, test/<type>/gt/<stem>.png\n"
    "or a benchmark folder whose sub-folders are such categories."
)


@dataclass(frozen=True)
class Sample:
    """One image with its label (0 good, 1 anomalous), defect type folder and mask file.

    ``mask`` is None for good images (their mask is all zeros) and, only when a category was
    loaded with ``require_masks=False``, for anomalous images without a mask file.
    """

    image: Path
    label: int
    defect_type: str
    mask: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image", Path(self.image))
        if self.mask is not None:
            object.__setattr__(self, "mask", Path(self.mask))
        if self.label not in (0, 1) or isinstance(self.label, bool):
            raise ValueError(f"Sample label must be 0 (good) or 1 (anomalous), got {self.label!r}")


@dataclass
class Category:
    """One product of a data set: training images (all good) and labelled test images."""

    name: str
    root: Path
    layout: str
    train: list[Sample]
    test: list[Sample]

    @property
    def good_type(self) -> str:
        """Name of the defect-free type folder in this layout ("good" or "ok")."""
        return GOOD_TYPES[self.layout]

    @property
    def defect_types(self) -> list[str]:
        """Sorted names of the anomalous types present in the test split."""
        return sorted({s.defect_type for s in self.test if s.label == 1})

    @property
    def num_test_good(self) -> int:
        return sum(1 for s in self.test if s.label == 0)

    @property
    def num_test_anomalous(self) -> int:
        return sum(1 for s in self.test if s.label == 1)

    def counts(self) -> dict[str, int]:
        """Test images per type, the good type first: for summaries and reports."""
        out: dict[str, int] = {}
        for s in self.test:
            out[s.defect_type] = out.get(s.defect_type, 0) + 1
        return out

    def __repr__(self) -> str:
        # The default repr would print every sample; a summary is what one wants to see.
        return (
            f"Category(name={self.name!r}, layout={self.layout!r}, root={str(self.root)!r}, "
            f"train={len(self.train)}, test={len(self.test)} ({self.num_test_good} good, "
            f"{self.num_test_anomalous} anomalous in {len(self.defect_types)} defect types))"
        )


# ----------------------------------------------------------------------------- listing helpers


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _visible(p) and p.is_dir()), key=lambda p: p.name)


def _files(folder: Path) -> list[Path]:
    """Visible files, broken symbolic links included: reading one then names it, instead of
    the image silently missing from the data set."""
    return sorted(
        (p for p in folder.iterdir() if _visible(p) and (p.is_file() or _broken_link(p))),
        key=lambda p: p.name,
    )


def _broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _describe(folder: Path, limit: int = 8) -> str:
    """Short listing of a folder's visible entries, for 'what was found' in messages."""
    try:
        entries = sorted(p for p in folder.iterdir() if _visible(p))
    except OSError:
        return "nothing readable"
    if not entries:
        return "nothing (the folder is empty)"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(names) + more


def _list_images(folder: Path, what: str, hint: str = "") -> list[Path]:
    """Image files of ``folder`` sorted by name; an error if there are none, since an empty
    folder in a data set is always a mistake (an unfinished copy, a wrong path)."""
    files = _files(folder)
    images = [p for p in files if _is_image_name(p)]
    if images:
        return images
    exts = ", ".join(sorted(IMAGE_EXTENSIONS))
    if files:
        found = ", ".join(sorted({p.suffix.lower() or "(none)" for p in files}))
        raise DataError(
            f"{folder}: {what} folder holds {len(files)} files but no images with a supported "
            f"extension ({exts}); found extensions: {found}. Convert the images to PNG or JPEG."
        )
    sub = _subdirs(folder)
    sub_hint = (
        f" It has sub-folders ({', '.join(p.name for p in sub)}): images must be directly in it."
        if sub
        else ""
    )
    raise DataError(
        f"{folder}: {what} folder holds no images ({exts}).{sub_hint}{hint} Put the images "
        "there, or point at the right folder."
    )


def _child(folder: Path, name: str) -> Path | None:
    """Exact-name child folder (case-sensitive even on case-insensitive file systems)."""
    for p in _subdirs(folder):
        if p.name == name:
            return p
    return None


def _misnamed_error(found: Path, expected: str, why: str) -> DataError:
    return DataError(
        f"{found}: {why} must be named '{expected}', not '{found.name}'. Rename the folder to "
        f"'{expected}'."
    )


def _check_layout_name(layout: str | None) -> str | None:
    if layout is None:
        return None
    if layout not in LAYOUTS:
        raise DataError(
            f"unknown data set layout {layout!r}. Use one of {', '.join(LAYOUTS)}, or leave it "
            "unset to detect the layout from the folders."
        )
    return layout


# ----------------------------------------------------------------------------- detection


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(
            f"{path}: data folder not found. Check the path (relative paths start at {Path.cwd()})."
        )
    if not path.is_dir():
        raise DataError(f"{path}: is a file, not a data folder. Give the category's folder.")
    return path


def _train_folder(root: Path) -> Path | None:
    """``root/train``, or an error for a misnamed one (``Train``, ``training``)."""
    train = _child(root, "train")
    if train is not None:
        return train
    for p in _subdirs(root):
        if p.name.lower() in _TRAIN_SYNONYMS:
            raise _misnamed_error(p, "train", "the folder of training images")
    return None


def _looks_like_category(folder: Path) -> bool:
    names = {p.name.lower() for p in _subdirs(folder)}
    return bool(names & (_TRAIN_SYNONYMS | _TEST_SYNONYMS))


def _detect_category_layout(root: Path) -> str | None:
    """Layout of a category folder; None if it has no train folder at all."""
    train = _train_folder(root)
    if train is None:
        return None
    names = [p.name for p in _subdirs(train)]
    if "good" in names:
        return "mvtec3d" if _child(train / "good", "rgb") is not None else "mvtec"
    if "ok" in names:
        return "btad"
    for name in names:
        if name.lower() in _GOOD_SYNONYMS:
            expected = "ok" if name.lower() == "ok" else "good"
            raise DataError(
                f"{train / name}: the folder of defect-free training images must be named "
                f"'{expected}' ('good' in MVTec AD and MVTec 3D-AD, 'ok' in BTAD), not "
                f"'{name}'. Rename the folder to '{expected}'."
            )
    loose = [p for p in _files(train) if _is_image_name(p)]
    if loose:
        raise DataError(
            f"{train}: training images lie directly in train/ ({len(loose)} images). Move them "
            "into train/good/ (MVTec AD layout)."
        )
    raise DataError(
        f"{train}: expected a 'good' (MVTec AD, MVTec 3D-AD) or 'ok' (BTAD) folder of "
        f"defect-free images in it; found {_describe(train)}.\n{_LAYOUT_HELP}"
    )


def _no_layout_error(root: Path) -> DataError:
    return DataError(
        f"{root}: no supported data set layout found (no train/ folder, and no sub-folder with "
        f"one); found {_describe(root)}.\n{_LAYOUT_HELP}\nPoint at a category or benchmark "
        "folder."
    )


def _benchmark_categories(root: Path) -> list[Path]:
    """Category sub-folders of a benchmark root; an error for any other sub-folder, so that a
    category with a broken layout is reported rather than dropped."""
    subdirs = _subdirs(root)
    cats = [p for p in subdirs if _looks_like_category(p)]
    if not cats:
        raise _no_layout_error(root)
    others = [p for p in subdirs if p not in cats]
    if others:
        raise DataError(
            f"{others[0]}: this sub-folder of the benchmark folder {root} is not a category (no "
            f"train/ or test/ folder; found {_describe(others[0])}), while "
            f"{', '.join(p.name for p in cats[:5])}{', ...' if len(cats) > 5 else ''} are. "
            "Move it out of the benchmark folder, or load the categories one by one."
        )
    return cats


def detect_layout(root: str | Path) -> str:
    """Layout name of a category folder, or of the categories of a benchmark folder (which
    must then all share one layout)."""
    path = _check_root(root)
    if _looks_like_category(path):
        layout = _detect_category_layout(path)
        if layout is None:
            raise DataError(
                f"{path}: has a test folder but no train/ folder; found {_describe(path)}. "
                "Add train/ with the defect-free training images."
            )
        return layout
    layouts = {p.name: detect_layout(p) for p in _benchmark_categories(path)}
    distinct = sorted(set(layouts.values()))
    if len(distinct) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in layouts.items())
        raise DataError(
            f"{path}: its categories use different layouts ({detail}). Load them one by one, "
            "or pass layout= to force one."
        )
    return distinct[0]


# ----------------------------------------------------------------------------- loading


def _mask_lookup(folder: Path | None, names: Iterable[str]) -> Path | None:
    """First existing file among ``names`` in ``folder`` (exact name first, then case-
    insensitively, since masks copied between systems often change case)."""
    if folder is None or not folder.is_dir():
        return None
    names = list(names)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    by_lower = {p.name.lower(): p for p in _files(folder)}
    for name in names:
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    return None


def _mask_names(stem: str, suffix: str, preferred: tuple[str, ...]) -> list[str]:
    """``<stem><suffix><ext>``: the layout's own extensions first, then any image extension."""
    exts = list(preferred) + sorted(IMAGE_EXTENSIONS - set(preferred))
    return [f"{stem}{suffix}{ext}" for ext in exts]


def _good_folder_error(found: Path, layout: str) -> DataError:
    return _misnamed_error(
        found,
        GOOD_TYPES[layout],
        f"in layout '{layout}' the folder of defect-free images",
    )


def _train_images(root: Path, layout: str, include_validation: bool) -> list[Sample]:
    good = GOOD_TYPES[layout]
    train = _train_folder(root)
    if train is None:
        raise DataError(
            f"{root}: no train/ folder (layout '{layout}'); found {_describe(root)}. Add "
            f"train/{good}/ with the defect-free training images."
        )
    splits = [train]
    if include_validation and layout == "mvtec3d":
        validation = _child(root, "validation")
        if validation is None:
            raise DataError(
                f"{root}: include_validation=True but there is no validation/ folder. Leave "
                "include_validation unset, or add the folder."
            )
        splits.append(validation)
    samples: list[Sample] = []
    for split in splits:
        folder = _child(split, good)
        if folder is None:
            try:
                seen = _detect_category_layout(root)
            except DataError:
                seen = None
            if seen is None or seen == layout:
                # not another layout: most likely a misnamed folder
                for p in _subdirs(split):
                    if p.name.lower() in _GOOD_SYNONYMS:
                        raise _good_folder_error(p, layout)
            hint = (
                f" The folder looks like layout '{seen}': pass layout='{seen}', or leave layout "
                "unset to detect it."
                if seen and seen != layout
                else f" Put the defect-free training images in {split / good}."
            )
            raise DataError(
                f"{split / good}: folder not found (layout '{layout}' keeps its defect-free "
                f"training images there); {split} holds {_describe(split)}.{hint}"
            )
        if layout == "mvtec3d":
            folder = _rgb_folder(folder, layout)
        images = _list_images(folder, "training image", _rgb_hint(folder, layout))
        samples.extend(Sample(p, 0, good, None) for p in images)
    return samples


def _rgb_hint(folder: Path, layout: str) -> str:
    """Extra advice when an MVTec 3D-AD folder is read with another layout."""
    if layout != "mvtec3d" and _child(folder, "rgb") is not None:
        return " Its rgb/ sub-folder looks like layout 'mvtec3d': pass layout='mvtec3d'."
    return ""


def _rgb_folder(type_folder: Path, layout: str) -> Path:
    rgb = _child(type_folder, "rgb")
    if rgb is None:
        raise DataError(
            f"{type_folder}: no rgb/ folder (layout '{layout}' keeps the RGB images in "
            f"<type>/rgb/); found {_describe(type_folder)}. Add the rgb/ folder, or pass the "
            "right layout."
        )
    return rgb


def _test_images(root: Path, layout: str, require_test: bool, require_masks: bool) -> list[Sample]:
    good = GOOD_TYPES[layout]
    test = _child(root, "test")
    if test is None:
        for p in _subdirs(root):
            if p.name.lower() in _TEST_SYNONYMS:
                raise _misnamed_error(p, "test", "the folder of test images")
        if not require_test:
            return []
        raise DataError(
            f"{root}: no test/ folder; found {_describe(root)}. Add test/<type>/ folders with "
            "the test images"
            f"{option(', or pass require_test=False to load the training images only', '')}."
        )
    loose = [p for p in _files(test) if _is_image_name(p)]
    if loose:
        raise DataError(
            f"{test}: {len(loose)} images lie directly in test/, so their labels are unknown. "
            f"Move them into test/{good}/ or test/<defect type>/."
        )
    type_folders = _subdirs(test)
    if not type_folders:
        if not require_test:
            return []
        raise DataError(
            f"{test}: the test folder holds no images (no type folders; found "
            f"{_describe(test)}). Add test/{good}/ and test/<defect type>/ folders with images."
        )
    for p in type_folders:
        if p.name != good and p.name.lower() in _GOOD_SYNONYMS:
            raise _good_folder_error(p, layout)
    # good first, then defect types by name
    type_folders.sort(key=lambda p: (p.name != good, p.name))
    gt_root = _child(root, "ground_truth") if layout in ("mvtec", "btad") else None
    samples: list[Sample] = []
    missing: list[tuple[Path, list[Path]]] = []
    for folder in type_folders:
        defect_type = folder.name
        label = 0 if defect_type == good else 1
        image_folder = _rgb_folder(folder, layout) if layout == "mvtec3d" else folder
        what = f"test image ('{defect_type}')"
        for image in _list_images(image_folder, what, _rgb_hint(image_folder, layout)):
            mask: Path | None = None
            if label == 1:
                mask_folder, names, own = _mask_candidates(root, gt_root, folder, image, layout)
                mask = _mask_lookup(mask_folder, names)
                if mask is None:
                    missing.append((image, [mask_folder / n for n in names[:own]]))
            samples.append(Sample(image, label, defect_type, mask))
    if missing and require_masks:
        raise _missing_masks_error(root, layout, missing)
    return samples


def _mask_candidates(
    root: Path, gt_root: Path | None, type_folder: Path, image: Path, layout: str
) -> tuple[Path, list[str], int]:
    """Folder and file names (most likely first) of an anomalous image's mask, and how many of
    the names are the layout's own (the ones worth naming in an error)."""
    stem = image.stem
    if layout == "mvtec":
        folder = (gt_root or root / "ground_truth") / type_folder.name
        return folder, _mask_names(stem, "_mask", (".png",)), 1
    if layout == "btad":
        folder = (gt_root or root / "ground_truth") / type_folder.name
        return folder, _mask_names(stem, "", (".png", ".bmp")), 2
    return type_folder / "gt", _mask_names(stem, "", (".png",)), 1


def _missing_masks_error(
    root: Path, layout: str, missing: list[tuple[Path, list[Path]]]
) -> DataError:
    image, expected = missing[0]
    where = " or ".join(str(p) for p in expected)
    more = (
        f" ({len(missing) - 1} more anomalous images have no mask too)" if len(missing) > 1 else ""
    )
    hint = ""
    if layout in ("mvtec", "btad") and _child(root, "ground_truth") is None:
        similar = [p.name for p in _subdirs(root) if p.name.lower() in _GT_SYNONYMS]
        hint = (
            f" There is no ground_truth/ folder, but there is '{similar[0]}': rename it to "
            "'ground_truth'."
            if similar
            else " There is no ground_truth/ folder at all."
        )
    return DataError(
        f"{image}: anomalous test image without a mask; expected {where}{more}.{hint} Add the "
        "mask (same size as the image, defects non-zero), move the image out of test/, or pass "
        f"{option('require_masks=False', '--allow-missing-masks')} to accept anomalous images "
        "without masks."
    )


def load_category(
    root: str | Path,
    layout: str | None = None,
    *,
    include_validation: bool = False,
    require_test: bool = True,
    require_masks: bool = True,
) -> Category:
    """Read one category folder.

    ``layout`` overrides detection. ``include_validation`` adds MVTec 3D-AD's validation/good
    images to training. ``require_test=False`` allows a missing or empty test folder (for
    training only); ``require_masks=False`` accepts anomalous images without masks (their
    ``mask`` is None). Raises :class:`DataError` for any folder that cannot be read as asked.
    """
    path = _check_root(root)
    chosen = _check_layout_name(layout)
    if not _looks_like_category(path):
        cats = [p.name for p in _subdirs(path) if _looks_like_category(p)]
        if cats:
            raise DataError(
                f"{path}: is a benchmark folder with categories ({', '.join(cats)}), not one "
                "category. Point at one of them, or use find_categories() to load them all."
            )
    if chosen is None:
        chosen = _detect_category_layout(path)
        if chosen is None:
            raise _no_layout_error(path)
    train = _train_images(path, chosen, include_validation)
    test = _test_images(path, chosen, require_test, require_masks)
    name = path.name or path.resolve().name
    return Category(name=name, root=path, layout=chosen, train=train, test=test)


def find_categories(
    root: str | Path,
    layout: str | None = None,
    *,
    include_validation: bool = False,
    require_test: bool = True,
    require_masks: bool = True,
) -> list[Category]:
    """Categories under ``root``: ``[root]`` if it is a category, else all category sub-folders
    of a benchmark folder (e.g. the 15 of MVTec AD), sorted by name. Options as in
    :func:`load_category`."""
    path = _check_root(root)
    _check_layout_name(layout)
    options = {
        "include_validation": include_validation,
        "require_test": require_test,
        "require_masks": require_masks,
    }
    if _looks_like_category(path):
        return [load_category(path, layout, **options)]
    return [load_category(p, layout, **options) for p in _benchmark_categories(path)]


# ------------------------------------------------------------------------- loose images


def image_files(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their images (recursively, sorted; hidden files and
    folders skipped, broken links kept so that reading them names them)."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists() and not path.is_symlink():  # a broken link: reading says so
            raise DataError(f"{path}: no such file or folder. Check the path.")
        if path.is_dir():
            images = sorted(
                p
                for p in path.rglob("*")
                if (p.is_file() or _broken_link(p))
                and _is_image_name(p)
                and all(_visible(Path(part)) for part in p.relative_to(path).parts)
            )
            if not images:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise DataError(f"{path}: folder holds no images ({exts}).")
            found.extend(images)
        else:
            found.append(path)
    if not found:
        raise DataError("no images given. Pass image files or folders.")
    return found


def training_samples(
    data: Category | str | Path | Sequence[str | Path], layout: str | None = None
) -> tuple[str, list[Sample]]:
    """(name, good samples) to train on: a Category's training split, a category folder's, a
    plain folder of good images (all of it), or a list of image files and folders."""
    if isinstance(data, Category):
        return data.name, list(data.train)
    if isinstance(data, (list, tuple)):
        return "images", [Sample(p, 0, "good") for p in image_files(data)]
    path = Path(data).expanduser()
    if path.is_dir() and not (path / "train").is_dir():
        loose = [p for p in path.iterdir() if p.is_file() and _is_image_name(p)]
        if loose:  # a plain folder of good images: everything in it is training data
            return path.name, [Sample(p, 0, "good") for p in image_files(path)]
    category = load_category(path, layout, require_test=False)
    return category.name, list(category.train)
