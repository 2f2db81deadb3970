"""The in-memory description of a dataset that every layout reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reidctl.errors import DatasetError

SPLITS = ("train", "query", "gallery")
#: Names accepted by ``--split``: a single split, ``test`` (query + gallery) or ``all``.
SPLIT_CHOICES = ("train", "query", "gallery", "test", "all")


@dataclass(frozen=True)
class Sample:
    """One image. ``relpath`` (relative to the dataset root, '/'-separated) is the row key."""

    relpath: str
    path: Path
    pid: int  # -1 = unknown; 0 = Market-style distractor (kept in the gallery)
    camid: int  # -1 = unknown; otherwise the dataset's own numbering (see ALGORITHMS.md §1)


@dataclass
class Dataset:
    """A dataset's three splits, each sorted by relative path (the row order of every artifact)."""

    name: str
    root: Path
    layout: str
    train: list[Sample] = field(default_factory=list)
    query: list[Sample] = field(default_factory=list)
    gallery: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        for split in SPLITS:
            setattr(self, split, sorted(getattr(self, split), key=lambda s: s.relpath))

    def samples(self, split: str) -> list[Sample]:
        """Rows of ``split`` in artifact order; ``test``/``all`` merge splits, sorted by relpath."""
        if split in SPLITS:
            return list(getattr(self, split))
        if split == "test":
            parts = ("query", "gallery")
        elif split == "all":
            parts = SPLITS
        else:
            raise DatasetError(f"unknown split '{split}' (choose one of {', '.join(SPLIT_CHOICES)})")
        merged: dict[str, Sample] = {}
        for name in parts:
            for s in getattr(self, name):
                merged.setdefault(s.relpath, s)
        return [merged[k] for k in sorted(merged)]

    def split_of(self, split: str) -> list[str]:
        """For each row of ``samples(split)``, the name of the split it came from."""
        if split in SPLITS:
            return [split] * len(getattr(self, split))
        owner: dict[str, str] = {}
        for name in SPLITS:
            for s in getattr(self, name):
                owner.setdefault(s.relpath, name)
        return [owner[s.relpath] for s in self.samples(split)]

    def summary(self) -> dict[str, dict[str, int]]:
        out = {}
        for split in SPLITS:
            rows = getattr(self, split)
            out[split] = {
                "images": len(rows),
                "ids": len({s.pid for s in rows if s.pid >= 0}),
                "cameras": len({s.camid for s in rows if s.camid >= 0}),
            }
        return out
