"""DBSCAN on the Jaccard distance: the CC family's clustering (ALGORITHMS.md §3.3-3.4)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from reidctl.cluster.algorithms.base import SharedParams
from reidctl.cluster.algorithms.jaccard_based import JaccardAlgorithm
from reidctl.cluster.dbscan import dbscan
from reidctl.errors import ReidctlError

#: Beyond this many images DBSCAN's labels keep only the Jaccard distances up to --eps unless
#: --jaccard-keep says otherwise: on CNN features the full matrix holds ≈ 2,000 entries a row
#: (measured on 97k images, bench/README.md), 1.6 GB at 100k and 16 GB at 1M, while DBSCAN
#: reads ≈ 5 a row.
FULL_JACCARD_ROWS = 200_000


class DBSCAN(JaccardAlgorithm):
    name = "dbscan"
    help = "dbscan (the CC family)"
    Params = SharedParams  # the official values of Cluster Contrast's commands

    def check_own(self, params: Any) -> None:
        if not 0 < params.eps < 1:
            raise ReidctlError("--eps must lie in (0, 1): the Jaccard distance is 1 beyond the neighbourhoods")

    def check_keep(self, params: Any) -> None:
        """A bound below --eps would lose neighbours DBSCAN reads, and change the clusters."""
        keep = params.jaccard_keep
        if keep is not None and keep < params.eps:
            raise ReidctlError(f"--jaccard-keep {keep} is below --eps {params.eps}: DBSCAN would lose neighbours "
                               "and the clusters would change")

    def default_keep(self, params: Any, n: int) -> tuple[float | None, str | None]:
        if n <= FULL_JACCARD_ROWS:
            return None, None
        return float(params.eps), (f"{n:,} images: the labels keep only the Jaccard distances ≤ {params.eps} "
                                   "(--eps), all DBSCAN reads; --jaccard-keep 1 keeps all of them")

    def partition(self, jac: sp.csr_matrix, params: Any) -> np.ndarray:
        return dbscan(jac, params.eps, params.min_samples)
