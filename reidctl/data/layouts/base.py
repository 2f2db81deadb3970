"""What a dataset layout is: how a ``--data`` folder or file is recognised and read.

A layout is one :class:`Layout` object registered under its ``--dataset`` name in
:data:`~reidctl.data.layouts.registry.LAYOUTS`; :mod:`reidctl.data.datasets` asks the
registered layouts and never names one.
"""

from __future__ import annotations

from pathlib import Path

from reidctl.data.base import Dataset
from reidctl.errors import DatasetError


class Layout:
    """One dataset layout: the class attributes say what it reads, :meth:`detect` recognises it,
    :meth:`read` turns it into a :class:`Dataset`."""

    #: The ``--dataset`` name, also recorded as ``Dataset.layout``.
    name: str = ""
    #: What the layout expects, in one line; errors read "<path>: not a <expects>".
    expects: str = ""
    #: How "no known dataset layout (expected …; …)" names it; None for a layout never detected.
    #: Layouts with the same phrase are named once.
    looks_like: str | None = None
    #: Whether ``--data`` may be a folder, or a single file, of this layout.
    folders: bool = True
    files: bool = False
    #: Whether detection also looks for it one level down (an extracted archive usually adds a
    #: folder). A layout that does not is a catch-all: tried only after the folder and each of its
    #: sub-folders matched no other layout.
    descend: bool = True
    #: ``--data PREFIX+NAME`` selects this layout by a name instead of a path (``synthetic:``).
    prefix: str | None = None
    #: Layouts that look alike and share one detector (the Market-1501 family) name their family:
    #: detection asks the first of them, whose :meth:`claim` answers for all (once, not per member).
    family: str | None = None

    def detect(self, path: Path, names: str) -> bool:
        """Whether ``path`` itself (no descending) has this layout. ``names`` is its folder name as
        the user pointed at it, lower-case: ``market``, or one level down ``market/extracted``."""
        return False

    def claim(self, path: Path, names: str) -> str | None:
        """The registered name of the layout ``path`` itself has, when this layout (or its family)
        recognises it; None otherwise. Default: this layout's name when :meth:`detect` says so."""
        return self.name if self.detect(path, names) else None

    def fits(self, path: Path) -> bool:
        """Whether ``path`` itself can be read as this layout when ``--dataset`` forces it
        (by default: when it is detected as such)."""
        return self.detect(path, path.name.lower())

    def locate(self, root: Path) -> Path:
        """``root`` or its single sub-folder that :meth:`fits`; otherwise a clear error."""
        if self.fits(root):
            return root
        inner = [c for c in subdirs(root) if self.fits(c)]
        if len(inner) == 1:
            return inner[0]
        if inner:
            raise several_datasets(root, [c.name + "/" for c in inner])
        raise DatasetError(f"{root}: not a {self.expects}")

    def read(self, path: Path) -> Dataset:
        """Read ``path`` (an existing absolute folder, or file where :attr:`files`) into a Dataset;
        a folder one level above the dataset is read through :meth:`locate`."""
        raise NotImplementedError

    def read_named(self, name: str) -> Dataset:
        """Read ``--data PREFIX+NAME`` (a layout with a :attr:`prefix`)."""
        raise NotImplementedError


def subdirs(path: Path) -> list[Path]:
    """The sub-folders of ``path`` that are not hidden, sorted."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def several_datasets(root: Path, names: list[str]) -> DatasetError:
    """The error for a ``--data`` folder that holds more than one dataset (``names``: 'a/, b/')."""
    return DatasetError(f"{root}: holds several datasets ({', '.join(names)}); point --data at one of them")
