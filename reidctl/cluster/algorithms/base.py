"""What a clustering algorithm declares and does, and the kNN search they share.

An algorithm is one object registered under its ``--algo`` name (:mod:`.registry`). It owns:

- ``Params``: a dataclass of its values of the shared numeric options (``k1``, ``k2``, ``eps``,
  ``min_samples``), with its official values as real defaults; an option left unset takes them
  (:class:`reidctl.cluster.clustering.ClusterParams`).
- ``check(params)``: the ranges it needs; ``refuse_given(params, given)``: the options it does
  not read, refused when a user gave them (so that no one believes they changed the clusters)
  and its optional package checked, when the options are resolved, before any stage runs.
- ``check_fits(n, params)``: refuses, early, ``n`` rows it cannot cluster in memory.
- ``run(feats, params, parts, keep)``: the labels, the kNN lists, and the sparse distance it
  clustered on, stored under ``distance_name`` (a name that says what it is: ``jaccard``,
  ``link_distance``), which label refinements read through :func:`.registry.clustered_distance`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from reidctl.progress import callback, progress_bar
from reidctl.runtime import dist as ddp  # (``dist`` names the kNN distances here)
from reidctl.search import Searched, knn_search, recall_report
from reidctl.search.approx import APPROX_BACKENDS


@dataclass
class SharedParams:
    """The numeric options every algorithm reads its own way, at the official values of Cluster
    Contrast's commands (ALGORITHMS.md §3.3-3.4): an algorithm whose official values differ
    subclasses this with its own defaults."""

    k1: int = 30
    k2: int = 6
    eps: float = 0.6
    min_samples: int = 4


@dataclass
class Clustered:
    """What an algorithm returns (on rank 0 of a ``torchrun`` job; the other ranks get None)."""

    labels: np.ndarray  # N int32, −1 = outlier
    knn_index: np.ndarray  # N×k int32
    knn_dist: np.ndarray  # N×k float32, squared L2 of unit vectors (2 − 2·cos)
    distance: sp.csr_matrix  # the sparse N×N distance the labels were clustered on
    times: dict[str, float]  # seconds per step (knn_s, jaccard_s, cluster_s ...)
    searched: dict[str, Any] = dataclasses.field(default_factory=dict)  # the approximate search's probe (summary keys)


class ClusterAlgorithm:
    """Base of a clustering algorithm (see the module's docstring for the contract)."""

    name: ClassVar[str]
    #: One line for ``--algo``'s help: what it is, and what it needs installed.
    help: ClassVar[str]
    Params: ClassVar[type]
    distance_name: ClassVar[str] = "jaccard"
    #: A fixed seed of a randomised algorithm, recorded with the parameters.
    seed: ClassVar[dict[str, int]] = {}

    def defaults(self) -> dict[str, Any]:
        """Its official values of the shared options."""
        return dataclasses.asdict(self.Params())

    def refuse_given(self, params: Any, given: set[str]) -> None:
        """Refuse options in ``given`` (names the user set) that this algorithm would ignore."""

    def check(self, params: Any) -> None:
        """Refuse values this algorithm cannot run with, in one line."""

    def check_fits(self, n: int, params: Any) -> None:
        """Refuse, before hours of other work, ``n`` rows it cannot cluster in this machine's
        memory. Default: nothing to refuse (the sparse structures bound themselves)."""

    def default_keep(self, params: Any, n: int) -> tuple[float | None, str | None]:
        """The bound on the stored distances when ``--jaccard-keep`` is unset (None: all), and
        the sentence the stage prints when it chose one. Default: all."""
        return None, None

    def run(self, feats: np.ndarray, params: Any, *, parts: np.ndarray | None,
            keep: float | None) -> Clustered | None:
        raise NotImplementedError


def stage_knn(x: np.ndarray, k: int, params: Any, label: str = "") -> Searched:
    """The kNN lists of the cluster stage, with the recall probe of an approximate search
    (``params.knn_recall``). Under ``torchrun`` each rank searches its block of query rows against
    all rows, the ranks follow rank 0's tuning, and every rank gets the whole lists, in row order:
    the same lists as one process for an exact search (row-wise, with a tie rule that does not
    depend on the blocks); the probe then runs on the gathered lists."""
    n = len(x)
    sharded = ddp.is_distributed()
    lo, hi = ddp.shard_range(n) if sharded else (0, n)
    shown = f" ({params.knn_backend})" if params.knn_backend in APPROX_BACKENDS else ""
    with progress_bar(f"kNN{label}{shown}", hi - lo, unit="rows") as advance:
        found = knn_search(x, k, backend=params.knn_backend, device=params.device, progress=callback(advance),
                           rows=(lo, hi) if sharded else None, recall=params.knn_recall,
                           agree=(lambda value: ddp.all_gather_object(value)[0]) if sharded else None)
    if sharded:
        found.dist = ddp.all_gather_rows(torch.from_numpy(np.ascontiguousarray(found.dist))).numpy()
        found.idx = ddp.all_gather_rows(torch.from_numpy(np.ascontiguousarray(found.idx))).numpy()
        if found.settings is not None and params.knn_recall > 0 and ddp.is_main():
            found.probe, found.note = recall_report(x, found.idx, k, params.knn_recall, found.backend, found.settings)
            found.warn = found.probe.recall < params.knn_recall
    return found


def search_report(found: Searched, name: str = "") -> dict[str, Any]:
    """``found``'s probe, tuning and note as summary entries; a named branch's keys carry its name
    (``knn_probe_part0``, ``knn_part0_recall_note``: every ``*_note`` is said to the user)."""
    report = found.report()
    if not name:  # the stored lists' search: the backend that searched them (exact where auto fell back)
        return {**report, "knn_backend": found.backend}
    return {(f"knn_{name}_recall_note" if key == "knn_recall_note" else f"{key}_{name}"): value
            for key, value in report.items()}
