"""The in-memory description of a dataset that every layout reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    pid: int  # -1 = unknown; otherwise the layout's own numbering (Dataset.distractor_pid: nobody)
    camid: int  # -1 = unknown; otherwise the dataset's own numbering (see ALGORITHMS.md §1)


@dataclass
class Dataset:
    """A dataset's three splits, each sorted by relative path (the row order of every artifact).

    Identities are numbered per split by the layout: query and gallery share one numbering (the
    test identities), the train split has its own, which may reuse the same numbers for other
    people (MSMT17's test ids start at 0 again). Wherever splits are joined into one labelled
    set (:meth:`labelled`, :meth:`pids` of ``all``) the identities are *keyed by split*: a train
    pid stays, a test pid becomes ``pid + test_offset`` (MSMT17: + 1,041, as MAR's
    ``construct_dataset_MSMT17.m``), so train id k and test id k stay two people.
    """

    name: str
    root: Path
    layout: str
    train: list[Sample] = field(default_factory=list)
    query: list[Sample] = field(default_factory=list)
    gallery: list[Sample] = field(default_factory=list)
    #: The pid that shows nobody in the query and gallery (a distractor): 0 in the Market-1501
    #: convention (Market, Duke, CUHK03-NP, Market-style folders, synthetic); None where every
    #: pid ≥ 0 is a person (MSMT17, manifests). A train pid 0 is always a person; pid −1 (junk,
    #: unknown) never is.
    distractor_pid: int | None = None
    #: Relative paths of train rows read from a validation list (MSMT17's ``list_val.txt``):
    #: part of ``train`` (the unsupervised training set, as PPLR/ICSR read it), left out of a
    #: labelled source (``labelled(..., validation=False)``; MAR's source is list_train + test).
    validation: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for split in SPLITS:
            setattr(self, split, sorted(getattr(self, split), key=lambda s: s.relpath))
        self.validation = frozenset(self.validation)

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

    # ---------------------------------------------------------------- identities keyed by split

    def is_identity(self, split: str, pid: int) -> bool:
        """Whether ``pid`` in ``split`` (train, query or gallery) names a person: never −1, and
        not the layout's distractor pid in the query and gallery."""
        if pid < 0:
            return False
        return split == "train" or self.distractor_pid is None or pid != self.distractor_pid

    @property
    def test_offset(self) -> int:
        """What a test (query/gallery) pid is shifted by when splits are joined: the largest train
        identity + 1 (1,041 for MSMT17, whose train ids are 0..1040), 0 without train identities."""
        return max((s.pid + 1 for s in self.train if self.is_identity("train", s.pid)), default=0)

    def keyed_pid(self, split: str, pid: int, offset: int | None = None) -> int:
        """The identity of ``pid`` of ``split`` among the identities of every split: −1 when it
        names nobody, the pid itself in train, ``pid + test_offset`` in the query and gallery
        (``offset``: a precomputed ``test_offset``)."""
        if split not in SPLITS:
            raise DatasetError(f"unknown split '{split}' (choose one of {', '.join(SPLITS)})")
        if not self.is_identity(split, pid):
            return -1
        if split == "train":
            return pid
        return pid + (self.test_offset if offset is None else offset)

    def pids(self, split: str) -> list[int]:
        """Ground-truth pid of each row of ``samples(split)``, as artifacts record them. A single
        split and ``test`` keep the layout's pids (query and gallery share one numbering; pid 0
        stays the distractor the evaluation treats as a negative); ``all`` joins train and test,
        so its pids are keyed by split (:meth:`keyed_pid`; −1 for rows of nobody)."""
        rows = self.samples(split)
        if split != "all":
            return [s.pid for s in rows]
        offset = self.test_offset
        return [self.keyed_pid(name, s.pid, offset) for name, s in zip(self.split_of(split), rows)]

    def labelled(self, splits: str | tuple[str, ...] | list[str], *, validation: bool = True) -> list[Sample]:
        """The rows of ``splits`` (names of SPLIT_CHOICES, or one comma-separated string, e.g.
        ``"train,test"``) that show a person, each with its pid keyed by split: one labelled set
        in which identities of different splits never collide. Rows come split by split in the
        order given, each in artifact order; a row named twice comes once. ``validation=False``
        leaves out the train rows of ``validation`` (MSMT17's list_val: not in MAR's source)."""
        names = [p.strip() for p in splits.split(",")] if isinstance(splits, str) else list(splits)
        offset = self.test_offset
        seen: set[str] = set()
        out: list[Sample] = []
        for name in names:
            if name not in SPLIT_CHOICES:
                raise DatasetError(f"unknown split '{name}' (choose one of {', '.join(SPLIT_CHOICES)})")
            for part, s in zip(self.split_of(name), self.samples(name)):
                if s.relpath in seen or (not validation and part == "train" and s.relpath in self.validation):
                    continue
                pid = self.keyed_pid(part, s.pid, offset)
                if pid >= 0:
                    seen.add(s.relpath)
                    out.append(s if pid == s.pid else replace(s, pid=pid))
        return out

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
