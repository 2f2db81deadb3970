"""Read ``--data`` (a folder, a file or ``synthetic:NAME``) into a :class:`Dataset`.

Which layouts exist, how each is recognised and read, and what each expects is up to the layouts
registered in :data:`~reidctl.data.layouts.LAYOUTS` (one module each under
:mod:`reidctl.data.layouts`); this module only asks them, in their registration order. Every
layout is checked up front and rejected with a message that names the folder or file and the
layout that was expected, so a wrong ``--data`` fails before any model is built.
"""

from __future__ import annotations

import os
from pathlib import Path

from reidctl.data.base import Dataset
from reidctl.data.layouts import LAYOUTS, get_layout
from reidctl.data.layouts.base import several_datasets, subdirs
from reidctl.errors import DatasetError


def __getattr__(name: str) -> tuple[str, ...]:
    # DATASET_NAMES: the registered layout names, read when asked for (plug-ins included; a
    # ``from reidctl.data.datasets import DATASET_NAMES`` keeps the names registered by then)
    if name == "DATASET_NAMES":
        return tuple(LAYOUTS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_dataset(data: str | os.PathLike, dataset: str | None = None) -> Dataset:
    """Read ``data`` (a folder, a file such as a CSV manifest, or ``synthetic:NAME``) into a Dataset.

    ``dataset=None`` detects the layout; a name forces it and fails if the folder does not fit.
    """
    forced = None if dataset is None else get_layout(dataset)
    text = os.fspath(data)
    for layout in LAYOUTS.values():
        if layout.prefix and text.startswith(layout.prefix):
            if forced not in (None, layout):
                raise DatasetError(f"{text}: cannot be read as {dataset}; drop --dataset")
            return layout.read_named(text[len(layout.prefix):])
    if forced is not None and forced.prefix:
        raise DatasetError(f"{text}: the {dataset} dataset is selected as --data {forced.prefix}NAME")
    path = Path(text).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    path = path.resolve()
    if forced is None:  # read where detection found it: no second look for the dataset's folder
        name, found = _detect(path)
        return get_layout(name).read(found)
    if path.is_file() and not forced.files:
        raise DatasetError(f"{path}: is a file, not a folder in the {forced.expects}")
    if not path.is_file() and not forced.folders:
        raise DatasetError(f"{path}: is a folder, not a {forced.expects}")
    return forced.read(path)


def detect_layout(root: Path) -> str:
    """Name of the layout of ``root`` (a registered name), or DatasetError if none fits.

    Looks at the folder itself first, then at its sub-folders (an extracted archive usually
    adds one level, e.g. ``market/Market-1501-v15.09.15/``), then at the catch-all layouts
    (images directly in the folder).
    """
    return _detect(Path(root).expanduser())[0]


def _detect(root: Path) -> tuple[str, Path]:
    """:func:`detect_layout`, and the file or folder that has the layout: ``root`` or the one
    sub-folder of ``root`` that does."""
    if root.is_file():
        found = _claim(root, root.name, files=True)
        if found:
            return found, root
        wanted = " or a ".join(lay.expects for lay in LAYOUTS.values() if lay.files and not lay.folders)
        raise DatasetError(f"{root}: not a dataset folder or a {wanted}")
    if not root.is_dir():
        raise DatasetError(f"{root}: no such file or folder")
    found = _claim(root, root.name)
    if found:
        return found, root
    inner = {c: _claim(c, f"{root.name}/{c.name}") for c in subdirs(root)}
    inner = {c: lay for c, lay in inner.items() if lay}
    if len(inner) == 1:
        folder, found = next(iter(inner.items()))
        return found, folder
    if len(inner) > 1:
        raise several_datasets(root, sorted(c.name + "/" for c in inner))
    found = _claim(root, root.name, descend=False)
    if found:
        return found, root
    looks = list(dict.fromkeys(lay.looks_like for lay in LAYOUTS.values() if lay.looks_like))
    expected = "; or ".join(filter(None, ["; ".join(looks[:-1]), *looks[-1:]]))
    raise DatasetError(f"{root}: no known dataset layout (expected {expected})")


def _claim(path: Path, names: str, *, files: bool = False, descend: bool = True) -> str | None:
    """The first registered layout that detects ``path`` (a file, or a folder looked at by the
    layouts that ``descend`` or else by the catch-alls); ``names``: its folder name(s)."""
    families: set[str] = set()  # a family's first layout answers for all its members
    for key, layout in LAYOUTS.items():
        asked = layout.files if files else layout.folders and layout.descend == descend
        if not asked or layout.family in families:
            continue
        if layout.family:
            families.add(layout.family)
        found = layout.claim(path, names.lower())
        if found:
            return key if found == layout.name else found
    return None
