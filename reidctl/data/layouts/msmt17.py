"""MSMT17 in either of its two layouts: the original list files, or the Market-style re-arrangement.

The list layout's train split is list_train + list_val (PPLR/ICSR's training set); the list_val
rows are recorded in ``Dataset.validation`` (MAR's source leaves them out). Test ids start at 0
again and pid 0 is a person (no distractor pid).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from reidctl.data.base import SPLITS, Dataset, Sample
from reidctl.data.layouts.market import (
    MARKET_EXPECTED,
    MarketStyle,
    NameRule,
    has_market_dirs,
    msmt_folders,
    parse_int,
)
from reidctl.errors import DatasetError

#: Split → list files of the original release. The validation list is part of train (PPLR/ICSR)
#: and its rows are recorded (Dataset.validation).
MSMT_VALIDATION_LIST = "list_val.txt"
MSMT_LISTS = {
    "train": ("list_train.txt", MSMT_VALIDATION_LIST),
    "query": ("list_query.txt",),
    "gallery": ("list_gallery.txt",),
}
_MSMT_LIST_RE = re.compile(r"([-\d]+)_([-\d]+)_([-\d]+)")  # pid, per-id index, camera (1-based)
# MSMT17 numbers test identities from 0 again: its pid 0 is a person in every split.
MSMT_RULE = NameRule(re.compile(r"([-\d]+)_c(\d+)"), "0000_c1_0000.jpg", (1, 15), distractor_pid=None)


class MSMT17(MarketStyle):
    name = "msmt17"
    expects = ("MSMT17 layout (expected train/, test/ or mask_train_v2/, mask_test_v2/ with "
               "list_train.txt, list_val.txt, list_query.txt, list_gallery.txt; "
               f"or the Market-style {MARKET_EXPECTED})")
    looks_like = "an MSMT17 folder with train/, test/ and list_*.txt"
    rule = MSMT_RULE

    def fits(self, path: Path) -> bool:
        return msmt_folders(path) is not None or has_market_dirs(path)

    def read(self, path: Path) -> Dataset:
        root = self.locate(path)
        folders = msmt_folders(root)
        if folders is None:
            return super().read(root)
        splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
        validation: set[str] = set()
        for split, list_names in MSMT_LISTS.items():
            folder = folders[0] if split == "train" else folders[1]
            for list_name in list_names:
                list_path = root / list_name
                if not list_path.is_file():
                    raise DatasetError(f"{root}: missing {list_name} ({self.expects})")
                for lineno, line in enumerate(list_path.read_text(errors="replace").splitlines(), 1):
                    fields = line.split()
                    if not fields:
                        continue
                    rel = posixpath.normpath(f"{folder}/{fields[0]}")
                    m = _MSMT_LIST_RE.search(posixpath.basename(rel))
                    pid = parse_int(m.group(1)) if m else None
                    cam = parse_int(m.group(3)) if m else None
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
        return Dataset(name=self.name, root=root, layout=self.name, distractor_pid=None,
                       validation=frozenset(validation), **splits)
