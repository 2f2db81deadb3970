"""Read a dataset folder, a CSV manifest or a synthetic set into a :class:`Dataset`.

Every layout is checked up front and rejected with a message that names the folder or file and
the layout that was expected, so a wrong ``--data`` fails before any model is built. File-name
parsing follows the official codes exactly (ALGORITHMS.md §1) so that pids, cameras and row
order match the published numbers; the one deliberate change is that names are parsed on the
basename, never the whole path.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from reidctl.data.base import SPLITS, Dataset, Sample
from reidctl.data.images import is_image_name
from reidctl.errors import DatasetError

DATASET_NAMES: tuple[str, ...] = (
    "market1501",
    "dukemtmc",
    "msmt17",
    "cuhk03",
    "cuhk03-labeled",
    "cuhk03-detected",
    "folder",
    "manifest",
    "images",
    "synthetic",
)

#: Split → sub-folder of a Market-1501-style dataset.
MARKET_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_MARKET_EXPECTED = "bounding_box_train/, query/, bounding_box_test/"

#: Split → list files of the original MSMT17 release; (train folder, test folder) for V1 and V2.
#: The validation list is part of train (PPLR/ICSR) and its rows are recorded (Dataset.validation).
MSMT_VALIDATION_LIST = "list_val.txt"
MSMT_LISTS = {
    "train": ("list_train.txt", MSMT_VALIDATION_LIST),
    "query": ("list_query.txt",),
    "gallery": ("list_gallery.txt",),
}
_MSMT_FOLDERS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))
_MSMT_LIST_RE = re.compile(r"([-\d]+)_([-\d]+)_([-\d]+)")  # pid, per-id index, camera (1-based)

_DUKE_NAME = re.compile(r"^\d+_c\d+_f\d+\.")  # 0005_c2_f0046985.jpg (Market: 0002_c1s1_000451_03.jpg)

_EXPECTED = {
    "market1501": f"Market-1501 layout (expected {_MARKET_EXPECTED})",
    "dukemtmc": f"DukeMTMC-reID layout (expected {_MARKET_EXPECTED})",
    "msmt17": "MSMT17 layout (expected train/, test/ or mask_train_v2/, mask_test_v2/ with "
    "list_train.txt, list_val.txt, list_query.txt, list_gallery.txt; "
    f"or the Market-style {_MARKET_EXPECTED})",
    "cuhk03": f"CUHK03-NP layout (expected labeled/ and/or detected/, each with {_MARKET_EXPECTED})",
    "folder": f"Market-1501-style folder (expected at least one of {_MARKET_EXPECTED})",
    "manifest": "manifest (expected a .csv file with header path,pid,camid[,split])",
    "images": "folder of images (expected .jpg/.jpeg/.png/.bmp files in it or its sub-folders), or one image file",
}
_EXPECTED["cuhk03-labeled"] = _EXPECTED["cuhk03-detected"] = _EXPECTED["cuhk03"]


@dataclass(frozen=True)
class _NameRule:
    """How a Market-style layout turns a basename into (pid, camera)."""

    regex: re.Pattern[str]
    example: str
    cameras: tuple[int, int] | None = None  # allowed 1-based camera range, checked when set
    #: The query/gallery pid of nobody (Dataset.distractor_pid): 0 in the Market-1501 convention.
    distractor_pid: int | None = 0


_MARKET_RULE = _NameRule(re.compile(r"([-\d]+)_c(\d)"), "0002_c1s1_000451_03.jpg", (1, 6))
_DUKE_RULE = _NameRule(re.compile(r"([-\d]+)_c(\d)"), "0005_c2_f0046985.jpg", (1, 8))
# MSMT17 numbers test identities from 0 again: its pid 0 is a person in every split.
_MSMT_RULE = _NameRule(re.compile(r"([-\d]+)_c(\d+)"), "0000_c1_0000.jpg", (1, 15), distractor_pid=None)
# Generic folders: same as Market, but `\d+` so that a camera c10 is not read as c1.
_FOLDER_RULE = _NameRule(re.compile(r"([-\d]+)_c(\d+)"), "0002_c1s1_000451_03.jpg")


# ----------------------------------------------------------------------------------- entry point


def load_dataset(data: str | os.PathLike, dataset: str | None = None) -> Dataset:
    """Read ``data`` (a folder, a CSV manifest or ``synthetic:NAME``) into a Dataset.

    ``dataset=None`` detects the layout; a name forces it and fails if the folder does not fit.
    """
    if dataset is not None and dataset not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset '{dataset}' (choose one of {', '.join(DATASET_NAMES)})")
    text = os.fspath(data)
    if text.startswith("synthetic:"):
        return _load_synthetic(text[len("synthetic:") :], dataset)
    if dataset == "synthetic":
        raise DatasetError(f"{text}: the synthetic dataset is selected as --data synthetic:NAME")
    path = Path(text).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    path = path.resolve()
    if dataset == "images" or (dataset is None and path.is_file() and is_image_name(path.name)):
        return read_images(path)
    if path.is_file():
        if dataset not in (None, "manifest"):
            raise DatasetError(f"{path}: is a file, not a folder in the {_EXPECTED[dataset]}")
        return _read_manifest(path)
    if dataset == "manifest":
        raise DatasetError(f"{path}: is a folder, not a {_EXPECTED['manifest']}")
    layout = dataset or detect_layout(path)
    if layout == "images":
        return read_images(path)
    if layout == "msmt17":
        return _read_msmt(path)
    if layout.startswith("cuhk03"):
        return _read_cuhk03(path, layout)
    base = _resolve(path, layout)
    name = base.name if layout == "folder" else layout
    return _read_market_style(base, name=name, layout=layout, rule=_RULES[layout])


def detect_layout(root: Path) -> str:
    """Name of the layout of ``root`` (one of DATASET_NAMES), or DatasetError if none fits.

    Looks at the folder itself first, then at its sub-folders (an extracted archive usually
    adds one level, e.g. ``market/Market-1501-v15.09.15/``).
    """
    root = Path(root).expanduser()
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "manifest"
        raise DatasetError(f"{root}: not a dataset folder or a {_EXPECTED['manifest']}")
    if not root.is_dir():
        raise DatasetError(f"{root}: no such file or folder")
    found = _own_layout(root, root.name)
    if found:
        return found
    inner = {c: _own_layout(c, f"{root.name}/{c.name}") for c in _subdirs(root)}
    inner = {c: lay for c, lay in inner.items() if lay}
    if len(inner) == 1:
        return next(iter(inner.values()))
    if len(inner) > 1:
        names = ", ".join(sorted(c.name + "/" for c in inner))
        raise DatasetError(f"{root}: holds several datasets ({names}); point --data at one of them")
    if _holds_images(root):
        return "images"
    raise DatasetError(
        f"{root}: no known dataset layout (expected a Market-1501-style folder with "
        f"{_MARKET_EXPECTED}; an MSMT17 folder with train/, test/ and list_*.txt; a CUHK03-NP "
        "folder with labeled/ or detected/; a .csv manifest with columns path,pid,camid; or image files "
        "directly in the folder)"
    )


def _holds_images(path: Path) -> bool:
    """True when image files lie directly in ``path`` (a plain folder of crops)."""
    with os.scandir(path) as it:
        return any(e.is_file() and is_image_name(e.name) for e in it)


# ------------------------------------------------------------------------------ layout detection


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_market_dirs(path: Path) -> bool:
    return all((path / d).is_dir() for d in MARKET_DIRS.values())


def _msmt_folders(path: Path) -> tuple[str, str] | None:
    """(train folder, test folder) when ``path`` is an original-layout MSMT17 (V1 or V2)."""
    if not (path / "list_train.txt").is_file():
        return None
    for train, test in _MSMT_FOLDERS:
        if (path / train).is_dir() and (path / test).is_dir():
            return train, test
    return None


def _looks_duke(path: Path, n: int = 20) -> bool:
    """True when the first images found are named like DukeMTMC-reID (pid_cX_fFRAME)."""
    names: list[str] = []
    for sub in MARKET_DIRS.values():
        with os.scandir(path / sub) as it:
            names += [e.name for e in it if is_image_name(e.name)][:n]
    return bool(names) and all(_DUKE_NAME.match(nm) for nm in names)


def _own_layout(path: Path, hint: str) -> str | None:
    """The layout ``path`` has by itself (no descending); ``hint`` is the folder name(s)."""
    hint = hint.lower()
    if _has_market_dirs(path / "labeled"):
        return "cuhk03"
    if _has_market_dirs(path / "detected"):
        return "cuhk03-detected"
    if _msmt_folders(path):
        return "msmt17"
    if _has_market_dirs(path):
        if "msmt" in hint:
            return "msmt17"
        if "duke" in hint or _looks_duke(path):
            return "dukemtmc"
        return "market1501" if "market" in hint else "folder"
    if any((path / d).is_dir() for d in MARKET_DIRS.values()):
        return "folder"
    return None


def _fits(path: Path, layout: str) -> bool:
    if layout == "folder":
        return any((path / d).is_dir() for d in MARKET_DIRS.values())
    if layout == "msmt17":
        return _msmt_folders(path) is not None or _has_market_dirs(path)
    if layout.startswith("cuhk03"):
        return _has_market_dirs(path / _cuhk03_variant(layout))
    return _has_market_dirs(path)


def _resolve(root: Path, layout: str) -> Path:
    """``root`` or its single sub-folder that has ``layout``; otherwise a clear error."""
    if _fits(root, layout):
        return root
    inner = [c for c in _subdirs(root) if _fits(c, layout)]
    if len(inner) == 1:
        return inner[0]
    if inner:
        names = ", ".join(c.name + "/" for c in inner)
        raise DatasetError(f"{root}: holds several datasets ({names}); point --data at one of them")
    raise DatasetError(f"{root}: not a {_EXPECTED[layout]}")


# --------------------------------------------------------------------------------------- readers


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _read_market_style(
    root: Path, *, name: str, layout: str, rule: _NameRule, require_all: bool | None = None
) -> Dataset:
    """Market-1501 family: one flat folder per split, pid and camera parsed from the basename.

    pid -1 (junk) is dropped, pid 0 (distractors, where ``rule.distractor_pid`` says so) kept,
    cameras become 0-based.
    """
    if require_all is None:
        require_all = layout != "folder" and layout != "synthetic"
    missing = [d + "/" for d in MARKET_DIRS.values() if not (root / d).is_dir()]
    if require_all and missing:
        raise DatasetError(f"{root}: not a {_EXPECTED.get(layout, _EXPECTED['market1501'])}; "
                           f"missing {', '.join(missing)}")
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    for split, sub in MARKET_DIRS.items():
        folder = root / sub
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:  # a dangling link stays a row: extraction reports it as a bad image
            entries = [e for e in it if (e.is_file() or e.is_symlink()) and is_image_name(e.name)]
        if require_all and not entries:
            raise DatasetError(f"{folder}: no images (.jpg/.jpeg/.png/.bmp) in this {layout} split")
        for entry in entries:
            pid, cam = _parse_market_name(entry.name, rule)
            if pid is None or cam is None:
                raise DatasetError(
                    f"{entry.path}: file name does not match the {layout} pattern "
                    f"'{rule.regex.pattern}' (expected names like {rule.example})"
                )
            if rule.cameras and not rule.cameras[0] <= cam <= rule.cameras[1]:
                lo, hi = rule.cameras
                raise DatasetError(
                    f"{entry.path}: camera c{cam} is outside c{lo}..c{hi} of the {layout} layout "
                    "(use --dataset folder for other datasets in this layout)"
                )
            if pid == -1:
                continue
            splits[split].append(Sample(f"{sub}/{entry.name}", Path(entry.path), pid, cam - 1))
    if not any(splits.values()):
        raise DatasetError(f"{root}: no usable images in {_MARKET_EXPECTED} ({_EXPECTED['folder']})")
    return Dataset(name=name, root=root, layout=layout, distractor_pid=rule.distractor_pid, **splits)


def _parse_market_name(basename: str, rule: _NameRule) -> tuple[int | None, int | None]:
    m = rule.regex.search(basename)
    if not m:
        return None, None
    return _parse_int(m.group(1)), _parse_int(m.group(2))


def _cuhk03_variant(layout: str) -> str:
    return "detected" if layout == "cuhk03-detected" else "labeled"


def _read_cuhk03(root: Path, layout: str) -> Dataset:
    """CUHK03-NP: ``labeled/`` (cuhk03, cuhk03-labeled) or ``detected/``, each Market-style."""
    variant = _cuhk03_variant(layout)
    other = "labeled" if variant == "detected" else "detected"
    if not _fits(root, layout) and _has_market_dirs(root) and root.name.lower() != other:
        base = root  # pointed at the split folder itself, e.g. .../cuhk03-np/labeled
    else:
        base = _resolve(root, layout) / variant
    return _read_market_style(base, name=f"cuhk03-{variant}", layout=layout, rule=_FOLDER_RULE)


def _read_msmt(root: Path) -> Dataset:
    """MSMT17 in either of its two layouts (list files, or the Market-style re-arrangement).

    The list layout's train split is list_train + list_val (PPLR/ICSR's training set); the
    list_val rows are recorded in ``Dataset.validation`` (MAR's source leaves them out). Test
    ids start at 0 again and pid 0 is a person (no distractor pid)."""
    root = _resolve(root, "msmt17")
    folders = _msmt_folders(root)
    if folders is None:
        return _read_market_style(root, name="msmt17", layout="msmt17", rule=_MSMT_RULE)
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    validation: set[str] = set()
    for split, list_names in MSMT_LISTS.items():
        folder = folders[0] if split == "train" else folders[1]
        for list_name in list_names:
            list_path = root / list_name
            if not list_path.is_file():
                raise DatasetError(f"{root}: missing {list_name} ({_EXPECTED['msmt17']})")
            for lineno, line in enumerate(list_path.read_text(errors="replace").splitlines(), 1):
                fields = line.split()
                if not fields:
                    continue
                rel = posixpath.normpath(f"{folder}/{fields[0]}")
                m = _MSMT_LIST_RE.search(posixpath.basename(rel))
                pid = _parse_int(m.group(1)) if m else None
                cam = _parse_int(m.group(3)) if m else None
                if pid is None or cam is None:
                    raise DatasetError(
                        f"{list_path}:{lineno}: '{fields[0]}' does not match the MSMT17 pattern "
                        f"'{_MSMT_LIST_RE.pattern}' (expected names like "
                        "0000/0000_000_01_0303morning_0015_0.jpg)"
                    )
                path = root / rel
                if not path.is_file():
                    raise DatasetError(f"{list_path}:{lineno}: image {path} does not exist")
                splits[split].append(Sample(rel, path, pid, cam))  # camera stays 1-based
                if list_name == MSMT_VALIDATION_LIST:
                    validation.add(rel)
    return Dataset(name="msmt17", root=root, layout="msmt17", distractor_pid=None,
                   validation=frozenset(validation), **splits)


#: A folder name that says which camera its images come from: cam3, c3, camera_3, CAM-03.
_CAMERA_FOLDER = re.compile(r"^(?:c|cam|camera)[_-]?(\d+)$", re.IGNORECASE)
#: A crop named by the Market convention from its first character: 0002_c1s1_000451_03.jpg.
_LABELLED_CROP = _NameRule(re.compile(r"^(-?\d+)_c(\d+)"), "0002_c1s1_000451_03.jpg")


def read_images(path: Path) -> Dataset:
    """Every image under folder ``path`` (recursively, hidden entries skipped), or the one image
    file ``path``, as the train split (the split reidctl treats as unlabelled footage).

    Identities are unknown (-1) unless a basename starts with the Market pattern
    ``<pid>_c<cam>`` (then pid and 0-based camera are read as the Market-style layouts read
    them); otherwise the camera is the number of the nearest enclosing folder named like
    ``cam3``, ``c3`` or ``camera_3`` (footage sorted into one folder per camera), else unknown.
    """
    if path.is_file():
        if not is_image_name(path.name):
            raise DatasetError(f"{path}: not an image file (.jpg/.jpeg/.png/.bmp)")
        root, files = path.parent, [path.name]
    elif path.is_dir():
        root, files = path, sorted(_image_files(path))
    else:
        raise DatasetError(f"{path}: no such file or folder")
    if not files:
        raise DatasetError(f"{path}: no images (.jpg/.jpeg/.png/.bmp) in this folder or its sub-folders")
    samples = [_image_sample(root, rel) for rel in files]
    return Dataset(name=path.stem if path.is_file() else path.name, root=root, layout="images", train=samples)


def _image_files(root: Path) -> list[str]:
    """Relative '/'-separated paths of the image files under ``root``."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root).as_posix()
        found += [n if rel == "." else f"{rel}/{n}" for n in names if not n.startswith(".") and is_image_name(n)]
    return found


def _image_sample(root: Path, relpath: str) -> Sample:
    parts = relpath.split("/")
    pid, cam = _parse_market_name(parts[-1], _LABELLED_CROP)
    if pid is None or cam is None:
        pid, cam = -1, None
    else:
        cam -= 1  # 0-based, as the Market-style layouts number them
    if cam is None:
        cams = [m.group(1) for d in reversed(parts[:-1]) if (m := _CAMERA_FOLDER.match(d))]
        cam = int(cams[0]) if cams else -1
    return Sample(relpath, root / relpath, pid, cam)


def _read_manifest(csv_path: Path) -> Dataset:
    """A CSV ``path,pid,camid[,split]``: any images, empty pid/camid = unknown (-1)."""
    if csv_path.suffix.lower() != ".csv":
        raise DatasetError(f"{csv_path}: not a dataset folder or a {_EXPECTED['manifest']}")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{csv_path}: cannot read manifest: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    reader.fieldnames = header
    missing = [c for c in ("path", "pid", "camid") if c not in header]
    if missing:
        raise DatasetError(
            f"{csv_path}: manifest header lacks column(s) {', '.join(missing)} "
            f"({_EXPECTED['manifest']})"
        )
    root = csv_path.parent
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    first_line: dict[str, int] = {}
    for row in reader:
        where = f"{csv_path}:{reader.line_num}"
        raw = (row.get("path") or "").strip()
        if not raw:
            raise DatasetError(f"{where}: empty path")
        ids = {}
        for col in ("pid", "camid"):
            cell = (row.get(col) or "").strip()
            ids[col] = -1 if cell == "" else _parse_int(cell)
            if ids[col] is None:
                raise DatasetError(f"{where}: {col} '{cell}' is not an integer (leave it empty if unknown)")
            if ids[col] < 0 and cell != "":
                raise DatasetError(f"{where}: {col} {cell} is negative; identities and cameras are numbered from 0 "
                                   "(leave the cell empty if unknown)")
        split = (row.get("split") or "").strip() or "train"
        if split not in SPLITS:
            raise DatasetError(f"{where}: unknown split '{split}' (choose one of {', '.join(SPLITS)})")
        posix = raw.replace("\\", "/")
        if PurePosixPath(posix).is_absolute() or PureWindowsPath(raw).is_absolute():
            path = Path(raw)
            relpath = posixpath.normpath(path.as_posix())
        else:
            relpath = posixpath.normpath(posix)
            path = root / relpath
        if relpath in first_line:
            raise DatasetError(f"{where}: duplicate path '{raw}' (first listed on line {first_line[relpath]})")
        first_line[relpath] = reader.line_num
        if not path.is_file():
            raise DatasetError(f"{where}: image {path} does not exist")
        splits[split].append(Sample(relpath, path, ids["pid"], ids["camid"]))
    if not first_line:
        raise DatasetError(f"{csv_path}: manifest lists no images")
    # the user's own numbering: pid 0 is a person in every split (no distractor pid)
    return Dataset(name=csv_path.stem, root=root, layout="manifest", distractor_pid=None, **splits)


def _load_synthetic(name: str, dataset: str | None) -> Dataset:
    """``synthetic:NAME``: generated (once, cached) as a Market-style folder, then read as one."""
    if dataset not in (None, "synthetic"):
        raise DatasetError(f"synthetic:{name}: cannot be read as {dataset}; drop --dataset")
    if not name:
        raise DatasetError("synthetic: needs a name, e.g. --data synthetic:tiny")
    from reidctl.data.synthetic import ensure_synthetic

    root = Path(ensure_synthetic(name))
    return _read_market_style(root, name=f"synthetic:{name}", layout="synthetic", rule=_FOLDER_RULE)


_RULES = {
    "market1501": _MARKET_RULE,
    "dukemtmc": _DUKE_RULE,
    "folder": _FOLDER_RULE,
}
