"""A plain folder of image files (footage crops), or one image file: the catch-all layout."""

from __future__ import annotations

import os
import re
from pathlib import Path

from reidctl.data.base import Dataset, Sample
from reidctl.data.images import is_image_name
from reidctl.data.layouts.base import Layout
from reidctl.data.layouts.market import NameRule, parse_name
from reidctl.errors import DatasetError

#: A folder name that says which camera its images come from: cam3, c3, camera_3, CAM-03.
_CAMERA_FOLDER = re.compile(r"^(?:c|cam|camera)[_-]?(\d+)$", re.IGNORECASE)
#: A crop named by the Market convention from its first character: 0002_c1s1_000451_03.jpg.
_LABELLED_CROP = NameRule(re.compile(r"^(-?\d+)_c(\d+)"), "0002_c1s1_000451_03.jpg")


class Images(Layout):
    name = "images"
    expects = "folder of images (expected .jpg/.jpeg/.png/.bmp files in it or its sub-folders), or one image file"
    looks_like = "image files directly in the folder"
    files = True
    descend = False  # any folder with an image in it: only when nothing more specific is found

    def detect(self, path: Path, names: str) -> bool:
        """An image file, or a folder with image files directly in it."""
        if path.is_file():
            return is_image_name(path.name)
        with os.scandir(path) as it:
            return any(e.is_file() and is_image_name(e.name) for e in it)

    def read(self, path: Path) -> Dataset:
        return read_images(path)


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
    return Dataset(name=path.stem if path.is_file() else path.name, root=root, layout=Images.name, train=samples)


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
    pid, cam = parse_name(parts[-1], _LABELLED_CROP)
    if pid is None or cam is None:
        pid, cam = -1, None
    else:
        cam -= 1  # 0-based, as the Market-style layouts number them
    if cam is None:
        cams = [m.group(1) for d in reversed(parts[:-1]) if (m := _CAMERA_FOLDER.match(d))]
        cam = int(cams[0]) if cams else -1
    return Sample(relpath, root / relpath, pid, cam)
