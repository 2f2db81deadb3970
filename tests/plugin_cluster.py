"""A test-only clustering algorithm, to prove that one plugs in as a module plus one registry
line (``register``): connected components of the kNN links whose cosine similarity reaches
``eps``; components smaller than ``min_samples`` are outliers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from reidctl.cluster.algorithms import ALGORITHMS
from reidctl.cluster.algorithms.base import ClusterAlgorithm, Clustered, SharedParams, stage_knn
from reidctl.errors import ReidctlError


@dataclass
class ComponentsParams(SharedParams):
    k1: int = 3  # (k2 is not read)
    eps: float = 0.9
    min_samples: int = 2


class Components(ClusterAlgorithm):
    name = "components"
    help = "components (test only: connected components of the kNN links with cosine ≥ eps)"
    Params = ComponentsParams
    distance_name = "cosine_links"

    def check(self, params: Any) -> None:
        if not 0 < params.eps < 1:
            raise ReidctlError("--eps must lie in (0, 1) with --algo components")

    def run(self, feats: np.ndarray, params: Any, *, parts: np.ndarray | None,
            keep: float | None) -> Clustered | None:
        t = time.perf_counter()
        dist, idx = stage_knn(feats, params.k1, params)
        cos = 1 - dist / 2
        rows, cols = np.nonzero(cos >= params.eps)
        n = len(feats)
        graph = sp.csr_matrix((np.maximum(1 - cos[rows, cols], 0).astype(np.float32), (rows, idx[rows, cols])),
                              shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        sizes = np.bincount(comp)
        labels = np.full(n, -1, np.int32)
        kept = [c for c in dict.fromkeys(comp.tolist()) if sizes[c] >= params.min_samples]  # by first row
        for new, c in enumerate(kept):
            labels[comp == c] = new
        return Clustered(labels, idx.astype(np.int32), dist.astype(np.float32), graph,
                         {"knn_s": 0.0, "cluster_s": time.perf_counter() - t})


def register() -> None:
    """The one registry line a new algorithm adds (in reidctl/cluster/algorithms/__init__.py)."""
    ALGORITHMS["components"] = Components()
