"""A CSV manifest ``path,pid,camid[,split]``: any images, anywhere, with or without identities."""

from __future__ import annotations

import csv
import io
import posixpath
from pathlib import Path, PurePosixPath, PureWindowsPath

from reidctl.data.base import SPLITS, Dataset, Sample
from reidctl.data.layouts.base import Layout
from reidctl.data.layouts.market import parse_int
from reidctl.errors import DatasetError


class Manifest(Layout):
    name = "manifest"
    expects = "manifest (expected a .csv file with header path,pid,camid[,split])"
    looks_like = "a .csv manifest with columns path,pid,camid"
    folders = False
    files = True

    def detect(self, path: Path, names: str) -> bool:
        return path.suffix.lower() == ".csv"

    def read(self, path: Path) -> Dataset:
        """Empty pid/camid = unknown (-1); paths relative to the manifest's folder."""
        if not self.detect(path, path.name.lower()):
            raise DatasetError(f"{path}: not a dataset folder or a {self.expects}")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: cannot read manifest: {exc}") from None
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        missing = [c for c in ("path", "pid", "camid") if c not in header]
        if missing:
            raise DatasetError(f"{path}: manifest header lacks column(s) {', '.join(missing)} ({self.expects})")
        root = path.parent
        splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
        first_line: dict[str, int] = {}
        for row in reader:
            where = f"{path}:{reader.line_num}"
            raw = (row.get("path") or "").strip()
            if not raw:
                raise DatasetError(f"{where}: empty path")
            ids = {}
            for col in ("pid", "camid"):
                cell = (row.get(col) or "").strip()
                ids[col] = -1 if cell == "" else parse_int(cell)
                if ids[col] is None:
                    raise DatasetError(f"{where}: {col} '{cell}' is not an integer (leave it empty if unknown)")
                if ids[col] < 0 and cell != "":
                    raise DatasetError(f"{where}: {col} {cell} is negative; identities and cameras are numbered "
                                       "from 0 (leave the cell empty if unknown)")
            split = (row.get("split") or "").strip() or "train"
            if split not in SPLITS:
                raise DatasetError(f"{where}: unknown split '{split}' (choose one of {', '.join(SPLITS)})")
            posix = raw.replace("\\", "/")
            if PurePosixPath(posix).is_absolute() or PureWindowsPath(raw).is_absolute():
                image = Path(raw)
                relpath = posixpath.normpath(image.as_posix())
            else:
                relpath = posixpath.normpath(posix)
                image = root / relpath
            if relpath in first_line:
                raise DatasetError(f"{where}: duplicate path '{raw}' (first listed on line {first_line[relpath]})")
            first_line[relpath] = reader.line_num
            if not image.is_file():
                raise DatasetError(f"{where}: image {image} does not exist")
            splits[split].append(Sample(relpath, image, ids["pid"], ids["camid"]))
        if not first_line:
            raise DatasetError(f"{path}: manifest lists no images")
        # the user's own numbering: pid 0 is a person in every split (no distractor pid)
        return Dataset(name=path.stem, root=root, layout=self.name, distractor_pid=None, **splits)
