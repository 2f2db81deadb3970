"""Average-linkage clustering of the Jaccard distance into ``--n-clusters`` clusters (icrefine,
ALGORITHMS.md §5)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from reidctl.cluster.agglomerative import agglomerative, check_linkage_memory
from reidctl.cluster.algorithms.base import Clustered, SharedParams
from reidctl.cluster.algorithms.jaccard_based import JaccardAlgorithm
from reidctl.errors import ReidctlError


class AverageLinkage(JaccardAlgorithm):
    name = "agglomerative"
    help = "agglomerative (average linkage, icrefine)"
    Params = SharedParams  # the CC family's Jaccard values (eps and min_samples are not read)

    def check(self, params: Any) -> None:
        if not params.n_clusters:
            raise ReidctlError("--algo agglomerative needs --n-clusters")
        super().check(params)

    def check_keep(self, params: Any) -> None:
        keep = params.jaccard_keep
        if keep is not None and keep < 1:
            raise ReidctlError("--jaccard-keep below 1 does not apply to --algo agglomerative: average linkage "
                               "reads every distance")

    def check_fits(self, n: int, params: Any) -> None:
        check_linkage_memory(n)

    def run(self, feats: np.ndarray, params: Any, *, parts: np.ndarray | None,
            keep: float | None) -> Clustered | None:
        if params.n_clusters > len(feats):
            raise ReidctlError(f"--n-clusters {params.n_clusters} exceeds the number of samples ({len(feats)})")
        return super().run(feats, params, parts=parts, keep=keep)

    def partition(self, jac: sp.csr_matrix, params: Any) -> np.ndarray:
        return agglomerative(jac, params.n_clusters)
