"""The Market-1501 family: one flat folder per split, pid and camera parsed from each basename.

Market-1501, DukeMTMC-reID and Market-style folders live here; MSMT17 and CUHK03-NP
(:mod:`~reidctl.data.layouts.msmt17`, :mod:`~reidctl.data.layouts.cuhk03`) read the same
folders. File-name parsing follows the official codes exactly (ALGORITHMS.md §1) so that pids,
cameras and row order match the published numbers; the one deliberate change is that names are
parsed on the basename, never the whole path.

The family's members can look alike (a Duke folder is a Market-style folder), so which one a
folder is gets decided in one place, :func:`family_member`; each member detects a folder when
that decision names it.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from reidctl.data.base import SPLITS, Dataset, Sample
from reidctl.data.images import is_image_name
from reidctl.data.layouts.base import Layout
from reidctl.errors import DatasetError

#: Split → sub-folder of a Market-1501-style dataset.
MARKET_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MARKET_EXPECTED = "bounding_box_train/, query/, bounding_box_test/"
FOLDER_EXPECTS = f"Market-1501-style folder (expected at least one of {MARKET_EXPECTED})"

#: (train folder, test folder) of the original MSMT17 release, V1 and V2 (with list_*.txt).
_MSMT_FOLDERS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))
_DUKE_NAME = re.compile(r"^\d+_c\d+_f\d+\.")  # 0005_c2_f0046985.jpg (Market: 0002_c1s1_000451_03.jpg)


@dataclass(frozen=True)
class NameRule:
    """How a Market-style layout turns a basename into (pid, camera)."""

    regex: re.Pattern[str]
    example: str
    cameras: tuple[int, int] | None = None  # allowed 1-based camera range, checked when set
    #: The query/gallery pid of nobody (Dataset.distractor_pid): 0 in the Market-1501 convention.
    distractor_pid: int | None = 0


MARKET_RULE = NameRule(re.compile(r"([-\d]+)_c(\d)"), "0002_c1s1_000451_03.jpg", (1, 6))
DUKE_RULE = NameRule(re.compile(r"([-\d]+)_c(\d)"), "0005_c2_f0046985.jpg", (1, 8))
# Generic folders: same as Market, but `\d+` so that a camera c10 is not read as c1.
FOLDER_RULE = NameRule(re.compile(r"([-\d]+)_c(\d+)"), "0002_c1s1_000451_03.jpg")


# ------------------------------------------------------------------------------------ detection


def has_market_dirs(path: Path) -> bool:
    return all((path / d).is_dir() for d in MARKET_DIRS.values())


def msmt_folders(path: Path) -> tuple[str, str] | None:
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
            names += itertools.islice((e.name for e in it if is_image_name(e.name)), n)
    return bool(names) and all(_DUKE_NAME.match(nm) for nm in names)


def family_member(path: Path, names: str) -> str | None:
    """Which member of the family ``path`` itself is (no descending), by its folders, its list
    files and, for look-alike Market-style folders, ``names`` (lower-case folder names) and its
    image names; None when it is none of them."""
    if has_market_dirs(path / "labeled"):
        return "cuhk03"
    if has_market_dirs(path / "detected"):
        return "cuhk03-detected"
    if msmt_folders(path):
        return "msmt17"
    if has_market_dirs(path):
        if "msmt" in names:
            return "msmt17"
        if "duke" in names or _looks_duke(path):
            return "dukemtmc"
        return "market1501" if "market" in names else "folder"
    if any((path / d).is_dir() for d in MARKET_DIRS.values()):
        return "folder"
    return None


# --------------------------------------------------------------------------------------- reader


def parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def parse_name(basename: str, rule: NameRule) -> tuple[int | None, int | None]:
    """(pid, 1-based camera) read from ``basename`` by ``rule``; None where it does not match."""
    m = rule.regex.search(basename)
    if not m:
        return None, None
    return parse_int(m.group(1)), parse_int(m.group(2))


def read_market_style(root: Path, *, name: str, layout: str, rule: NameRule, expects: str,
                      require_all: bool) -> Dataset:
    """Market-1501 family: one flat folder per split, pid and camera parsed from the basename.

    pid -1 (junk) is dropped, pid 0 (distractors, where ``rule.distractor_pid`` says so) kept,
    cameras become 0-based. ``require_all``: every split folder must exist and hold images
    (``expects`` names the layout when one is missing).
    """
    missing = [d + "/" for d in MARKET_DIRS.values() if not (root / d).is_dir()]
    if require_all and missing:
        raise DatasetError(f"{root}: not a {expects}; missing {', '.join(missing)}")
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
            pid, cam = parse_name(entry.name, rule)
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
        raise DatasetError(f"{root}: no usable images in {MARKET_EXPECTED} ({FOLDER_EXPECTS})")
    return Dataset(name=name, root=root, layout=layout, distractor_pid=rule.distractor_pid, **splits)


# -------------------------------------------------------------------------------------- layouts


class MarketStyle(Layout):
    """A member of the Market-1501 family: all three split folders, names read by :attr:`rule`."""

    looks_like = f"a Market-1501-style folder with {MARKET_EXPECTED}"
    rule: NameRule = FOLDER_RULE
    #: Every split folder must be there and hold images.
    require_all = True

    family = "market-1501"

    def detect(self, path: Path, names: str) -> bool:
        return family_member(path, names) == self.name

    def claim(self, path: Path, names: str) -> str | None:
        return family_member(path, names)  # the family decides once which member a folder is

    def fits(self, path: Path) -> bool:
        return has_market_dirs(path)

    def dataset_name(self, base: Path) -> str:
        """``Dataset.name`` of the dataset read from folder ``base``."""
        return self.name

    def read(self, path: Path) -> Dataset:
        base = self.locate(path)
        return read_market_style(base, name=self.dataset_name(base), layout=self.name, rule=self.rule,
                                 expects=self.expects, require_all=self.require_all)


class Market1501(MarketStyle):
    name = "market1501"
    expects = f"Market-1501 layout (expected {MARKET_EXPECTED})"
    rule = MARKET_RULE


class DukeMTMC(MarketStyle):
    name = "dukemtmc"
    expects = f"DukeMTMC-reID layout (expected {MARKET_EXPECTED})"
    rule = DUKE_RULE


class Folder(MarketStyle):
    """Any dataset in the Market-1501 layout, named after its folder; a split may be left out."""

    name = "folder"
    expects = FOLDER_EXPECTS
    require_all = False

    def fits(self, path: Path) -> bool:
        return any((path / d).is_dir() for d in MARKET_DIRS.values())

    def dataset_name(self, base: Path) -> str:
        return base.name
