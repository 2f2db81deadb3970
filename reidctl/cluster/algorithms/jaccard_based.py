"""The algorithms of the CC family: a partition of the k-reciprocal Jaccard distance (or of a
weighted mixture of the distances of several feature branches, NCPLR's), which they share."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from reidctl.cluster.algorithms.base import ClusterAlgorithm, Clustered, search_report, stage_knn
from reidctl.cluster.jaccard import jaccard_distance
from reidctl.cluster.mixing import branch_features, mix_jaccard, parse_branches
from reidctl.errors import ReidctlError
from reidctl.progress import callback, progress_bar
from reidctl.runtime import dist as ddp


class JaccardAlgorithm(ClusterAlgorithm):
    """A partition of the sparse Jaccard distance: subclasses give :meth:`partition`."""

    def partition(self, jac: sp.csr_matrix, params: Any) -> np.ndarray:
        raise NotImplementedError

    def check(self, params: Any) -> None:
        if params.k1 < 2 or params.k2 < 1:
            raise ReidctlError("--k1 must be at least 2 and --k2 at least 1")
        self.check_own(params)
        self.check_keep(params)
        parse_branches(params.branches)

    def check_own(self, params: Any) -> None:
        """Refuse values of the options only this algorithm reads (DBSCAN's radius). Default: none."""

    def check_keep(self, params: Any) -> None:
        """Refuse a ``--jaccard-keep`` bound that would change the clusters. Default: any bound is
        safe."""

    def run(self, feats: np.ndarray, params: Any, *, parts: np.ndarray | None,
            keep: float | None) -> Clustered | None:
        branches = parse_branches(params.branches)
        # every branch's features before any work: a missing part fails at once
        inputs = [feats if name == "global" else branch_features(name, feats, parts) for name, _ in branches]
        times: dict[str, float] = {}
        searched: dict[str, Any] = {}
        if len(branches) == 1:  # one Jaccard, used as it is (the default: exactly Cluster Contrast)
            dist, idx, jac = _branch_jaccard(inputs[0], params, times, searched, keep=keep)
        else:  # each branch whole: a bound applies to the mixture only
            dist, idx, jac = _mixed_jaccard([name for name, _ in branches], inputs,
                                            [w for _, w in branches], params, times, searched)
            jac = _bounded(jac, keep)
        if not ddp.is_main():
            return None  # under torchrun the ranks shared the kNN search; rank 0 clusters and writes
        t = time.perf_counter()
        labels = self.partition(jac, params)
        times["cluster_s"] = time.perf_counter() - t
        return Clustered(np.asarray(labels, dtype=np.int32), idx.astype(np.int32), dist.astype(np.float32), jac,
                         times, searched)


def _branch_jaccard(x: np.ndarray, params: Any, times: dict[str, float], searched: dict[str, Any],
                    name: str = "", keep: float | None = None) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """kNN lists and sparse Jaccard distance of one feature matrix; adds its timings to ``times``
    (``knn_s``/``jaccard_s``, and ``knn_<name>_s``/``jaccard_<name>_s`` for a named branch) and an
    approximate search's probe to ``searched``."""
    n, label = len(x), f" {name}" if name else ""
    t = time.perf_counter()
    k_search = params.k1 + 1 if params.jaccard_variant == "original" else params.k1
    found = stage_knn(x, k_search, params, label)
    dist, idx = found.dist, found.idx
    searched.update(search_report(found, name))
    _add_time(times, "knn", name, time.perf_counter() - t)
    if not ddp.is_main():
        return dist, idx, sp.csr_matrix((n, n), dtype=np.float32)  # rank 0 alone goes on
    t = time.perf_counter()
    with progress_bar(f"Jaccard{label}", 2 * n, unit="rows") as advance:  # two passes over the rows
        jac = jaccard_distance(x, params.k1, params.k2, variant=params.jaccard_variant, knn=(dist, idx),
                               progress=callback(advance), keep=keep)
    _add_time(times, "jaccard", name, time.perf_counter() - t)
    return dist, idx, jac


def _mixed_jaccard(names: list[str], inputs: list[np.ndarray], weights: list[float], params: Any,
                   times: dict[str, float], searched: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """The first branch's kNN lists and Σ_b w_b·J_b (ALGORITHMS.md §7.2), one branch at a time."""
    results = [_branch_jaccard(x, params, times, searched, name) for name, x in zip(names, inputs)]
    t = time.perf_counter()
    mixed = mix_jaccard([jac for _, _, jac in results], weights)
    _add_time(times, "jaccard", "mix", time.perf_counter() - t)
    dist, idx, _ = results[0]
    return dist, idx, mixed


def _bounded(jac: sp.csr_matrix, keep: float | None) -> sp.csr_matrix:
    """``jac`` with only its entries ≤ ``keep`` and its diagonal (all of it when ``keep`` is None)."""
    if keep is None:
        return jac
    coo = jac.tocoo()
    stored = (coo.data <= np.float32(keep)) | (coo.row == coo.col)
    return sp.csr_matrix((coo.data[stored], (coo.row[stored], coo.col[stored])), shape=jac.shape)


def _add_time(times: dict[str, float], step: str, name: str, seconds: float) -> None:
    """Record ``<step>_<name>_s`` and add to the ``<step>_s`` total the CLI table shows."""
    if name:
        times[f"{step}_{name}_s"] = seconds
    times[f"{step}_s"] = times.get(f"{step}_s", 0.0) + seconds
