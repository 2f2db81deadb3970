"""InfoMap on the cosine kNN graph: Cluster Contrast's InfoMap variant (ALGORITHMS.md §3.9,
:mod:`reidctl.cluster.infomap`). It computes no Jaccard distance: the distance it keeps is the
graph it clustered, 1 − cos on each link (``link_distance``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from reidctl.cluster.algorithms.base import ClusterAlgorithm, Clustered, SharedParams, search_report, stage_knn
from reidctl.cluster.infomap import (
    INFOMAP_SEED,
    drop_small,
    infomap_links,
    infomap_modules,
    link_distances,
    require_infomap,
)
from reidctl.errors import ReidctlError
from reidctl.options import not_applicable
from reidctl.runtime import dist as ddp


@dataclass
class InfomapParams(SharedParams):
    """The argparse defaults of ``cluster_contrast_train_usl_infomap.py`` (``min_samples`` is not
    read; it keeps DBSCAN's value, recorded with the others)."""

    k1: int = 15
    k2: int = 4
    eps: float = 0.5


class InfoMap(ClusterAlgorithm):
    name = "infomap"
    help = "infomap (Cluster Contrast's InfoMap variant on the cosine kNN graph; pip install 'reidctl[infomap]')"
    Params = InfomapParams
    distance_name = "link_distance"
    seed = {"infomap_seed": INFOMAP_SEED}

    def refuse_given(self, params: Any, given: set[str]) -> None:
        """A value InfoMap would ignore is refused; --min-samples at its default value changes
        nothing and passes (a run's saved config.toml lists every clustering option)."""
        ignored = {"min_samples": "min_samples" in given and params.min_samples != InfomapParams.min_samples,
                   "n_clusters": params.n_clusters is not None, "jaccard_keep": params.jaccard_keep is not None}
        refused = [name for name, differs in ignored.items() if differs]
        if refused:
            raise not_applicable(refused, "--algo infomap")
        if params.branches != "global":
            raise ReidctlError(f"--algo infomap clusters the global features only: --branches {params.branches} "
                               "(a mixture of Jaccard distances) does not apply")
        require_infomap()

    def check(self, params: Any) -> None:
        if params.k1 < 2 or params.k2 < 0:
            raise ReidctlError("--k1 must be at least 2 and --k2 at least 0 with --algo infomap")
        if not 0 < params.eps < 1:
            raise ReidctlError("--eps must lie in (0, 1) with --algo infomap: it is the cosine similarity "
                               "a neighbour needs to be linked")

    def run(self, feats: np.ndarray, params: Any, *, parts: np.ndarray | None,
            keep: float | None) -> Clustered | None:
        n = len(feats)
        times: dict[str, float] = {}
        t = time.perf_counter()
        found = stage_knn(feats, params.k1, params)
        dist, idx = found.dist, found.idx
        times["knn_s"] = time.perf_counter() - t
        if not ddp.is_main():
            return None
        times["jaccard_s"] = 0.0  # none computed: InfoMap clusters the kNN graph itself
        t = time.perf_counter()
        links = infomap_links(dist, idx, params.eps)
        labels = drop_small(infomap_modules(n, links, seed=INFOMAP_SEED), params.k2)
        times["cluster_s"] = time.perf_counter() - t
        return Clustered(labels.astype(np.int32), idx.astype(np.int32), dist.astype(np.float32),
                         link_distances(n, links), times, search_report(found))
