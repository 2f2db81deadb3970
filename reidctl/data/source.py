"""The labelled auxiliary (source) dataset (``--aux-data``): of source pretraining, of MAR, and
of the joint source step every other method can add (:mod:`reidctl.train.joint`).

Its identities are the agents: row k of the agent classifier belongs to the k-th smallest pid of
the chosen splits, so a pretraining and a run that read the same dataset and splits agree on
which row is whose; the checkpoint stores the pids, and a mismatch is refused.

The pids are keyed by split (``Dataset.labelled``): a train pid stays, a test pid is shifted past
the train identities (MSMT17: + 1,041, as MAR's ``construct_dataset_MSMT17.m``), so ``train,test``
never merges two people. MSMT17's list_val rows are left out, as in MAR's source (list_train +
test, 124,068 images, 4,101 identities).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from reidctl.data.base import Sample
from reidctl.data.datasets import load_dataset
from reidctl.data.fingerprint import split_fingerprint
from reidctl.errors import ReidctlError

#: ``--aux-splits`` values: the train split, or every identity (MAR uses all 4,101 of MSMT17).
SOURCE_SPLITS = ("train", "train,test")
#: The source MAR's official code learns its agents from: every identity (MSMT17: list_train +
#: test, 4,101 identities), MAR's default of ``--aux-splits`` and ``pretrain --splits``.
DEFAULT_SOURCE_SPLITS = "train,test"


@dataclass
class SourceData:
    """Labelled source images: ``labels[i]`` (0..K-1) is the agent row of ``samples[i]``."""

    samples: list[Sample]
    labels: np.ndarray  # int64
    pids: np.ndarray  # K int64: the pid of each agent row, keyed by split (test pids shifted)
    root: str
    train: list[Sample]  # the source's train split (its normalisation statistics)

    @property
    def identities(self) -> int:
        return len(self.pids)

    def fingerprint(self) -> str:
        return split_fingerprint(self.samples)


def load_source(data: str, dataset: str | None = None, splits: str = DEFAULT_SOURCE_SPLITS) -> SourceData:
    """The labelled images of ``splits`` of ``data``, identities keyed by split. Junk (pid −1)
    and the layout's distractors (Market-style pid 0 in the query and gallery) have no identity
    and are left out; so are the train rows of a validation list (MSMT17's list_val)."""
    if not data:
        raise ReidctlError("--aux-data is required: a labelled source dataset whose identities become the agents")
    if splits not in SOURCE_SPLITS:
        raise ReidctlError(f"--aux-splits {splits}: choose train or train,test")
    ds = load_dataset(data, dataset)
    samples = ds.labelled(splits, validation=False)
    if not samples:
        raise ReidctlError(f"{ds.root}: no labelled images in its {splits} split(s) to learn source identities from")
    pids, labels = np.unique([s.pid for s in samples], return_inverse=True)
    if len(pids) < 2:
        raise ReidctlError(f"{ds.root}: a labelled source needs at least 2 identities (it has {len(pids)})")
    return SourceData(samples, labels.astype(np.int64), pids.astype(np.int64), str(ds.root), list(ds.train))


def same_dataset(source: str, target: str) -> bool:
    """Whether ``--aux-data`` names the target ``--data`` itself: the same folder or manifest
    (however spelt: relative, absolute, through a link, with a trailing slash) or the same
    synthetic preset."""
    def key(data: str) -> str:
        return data if data.startswith("synthetic:") else os.path.realpath(os.path.expanduser(data))

    return bool(source) and bool(target) and key(source) == key(target)


def refuse_source_is_target(source: str, target: str) -> None:
    """Refuse, in one line, a labelled source that is the target itself.

    Why refuse rather than warn: ``--aux-data`` adapts a model from a labelled source to an
    unlabelled target. With the target as its own source, training learns the target's identity
    labels (with ``train,test``, its test identities' too, the very ones the evaluation scores):
    the run is supervised, and its numbers would be read as an adaptation's."""
    if same_dataset(source, target):
        raise ReidctlError(f"--aux-data is the target --data ({target}): training would learn the target's own "
                           "identity labels; give a separate labelled source dataset")
