"""Clustering features into pseudo identities: the options (:class:`ClusterParams`) and
:func:`cluster_features` (labels, neighbour lists, the sparse distance).

Algorithms: DBSCAN or average linkage on the k-reciprocal Jaccard distance (the CC family,
icrefine), or InfoMap on the cosine kNN graph (Cluster Contrast's InfoMap variant,
:mod:`reidctl.cluster.infomap`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reidctl.cluster.algorithms import ALGORITHMS, ClusterAlgorithm, get_algorithm
from reidctl.errors import ReidctlError
from reidctl.options import check_finite, option
from reidctl.registry import one_of
from reidctl.search import DEFAULT_RECALL, KNN_BACKENDS, choose_backend
from reidctl.search.approx import APPROX_BACKENDS, require_faiss


@dataclass
class ClusterParams:
    """The clustering options, as the commands and the loop give them (ALGORITHMS.md §3.3-3.4,
    §3.9, §9).

    ``k1``, ``k2``, ``eps`` and ``min_samples`` left unset (None) take their algorithm's official
    value (its ``Params``, :mod:`reidctl.cluster.algorithms`) when the instance is built, so
    ``ClusterParams(algo="infomap").k1 == 15`` while ``ClusterParams(algo="infomap", k1=30).k1
    == 30``; the resolved numbers are what the artifacts and cache keys record. Build it once
    from the given values (a method's official ones, then the user's), not by replacing ``algo``
    on a built instance.
    """

    algo: str = field(default="dbscan", metadata=option(
        f"Clustering: {one_of([algorithm.help for algorithm in ALGORITHMS.values()])}.",
        aliases=("--global-clustering",)))
    k1: int | None = field(default=None, metadata=option(
        "Neighbourhood size of the k-reciprocal Jaccard distance; infomap: neighbours searched per image, "
        "itself included (15 with --algo infomap)."))
    k2: int | None = field(default=None, metadata=option(
        "Query-expansion size of the Jaccard distance (1 = none); infomap: clusters of at most k2 images "
        "become outliers (4 with --algo infomap)."))
    eps: float | None = field(default=None, metadata=option(
        "DBSCAN radius on the Jaccard distance; infomap: the cosine similarity a neighbour needs to be "
        "linked (0.5 with --algo infomap)."))
    min_samples: int | None = field(default=None, metadata=option(
        "DBSCAN core-point size (counts the point itself); not used by infomap."))
    n_clusters: int | None = field(default=None, metadata=option(
        "Clusters of average-linkage clustering (icrefine: 1200, the released code's value for every dataset, or "
        "N/5 when smaller; the paper's Market value is 800)."))
    jaccard_variant: str = field(default="cc", metadata=option(
        "cc (k1 columns incl. self, the official code) or original (Zhong et al., k1+1)."))
    knn_backend: str = field(default="auto", metadata=option(
        "kNN backend: torch or faiss (exact), faiss-ivf or faiss-hnsw (approximate, re-ranked exactly; "
        "pip install 'reidctl[faiss]'), or auto (exact while affordable, else faiss-hnsw where faiss is installed; "
        "said in the output)."))
    knn_recall: float = field(default=DEFAULT_RECALL, metadata=option(
        "Recall@k1 an approximate kNN search must reach on 1,000 sampled rows against exact search: auto tunes "
        "its settings until it does, or searches exactly and says why; faiss-hnsw/faiss-ivf keep theirs and warn "
        "below it. The measured recall is in the stage's summary. 0: no probe."))
    jaccard_keep: float | None = field(default=None, metadata=option(
        "Store only Jaccard distances up to this value (the others read as 1, as beyond the neighbourhoods); "
        "1 stores all. Default: all up to 200,000 images, and --eps with DBSCAN beyond (the same clusters; "
        "the full matrix holds about 2,000 entries a row, 16 GB at a million images)."))
    device: str = "auto"  # set by the command's --device
    branches: str = field(default="global", metadata=option(
        "Feature branches and weights of the distance: global, or e.g. global=0.6,part0=0.2,part1=0.2 "
        "(NCPLR's mixture, ALGORITHMS.md §7.2)."))

    def __post_init__(self) -> None:
        """Unset options take the algorithm's values; the options the algorithm would ignore and
        its optional package are checked here, when the loop builds its parameters, so they fail
        before any stage runs. (An unknown ``algo`` is refused by :meth:`check`.)"""
        algorithm = ALGORITHMS.get(self.algo)
        if algorithm is None:
            return
        defaults = algorithm.defaults()
        given = {name for name in defaults if getattr(self, name) is not None}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        algorithm.refuse_given(self, given)

    def check(self) -> None:
        check_finite(self)  # (also for params built without resolve(): reidctl.methods.plan.cluster_params)
        algorithm = self.algorithm
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ReidctlError(f"--n-clusters must be at least 1 (got {self.n_clusters})")
        if self.knn_backend not in KNN_BACKENDS:
            raise ReidctlError(f"--knn-backend {self.knn_backend}: choose one of {', '.join(KNN_BACKENDS)}")
        if self.knn_backend in APPROX_BACKENDS:
            require_faiss(self.knn_backend)
        if not 0 <= self.knn_recall <= 1:
            raise ReidctlError(f"--knn-recall {self.knn_recall}: must lie in [0, 1] (0: no probe)")
        keep = self.jaccard_keep
        if keep is not None and not 0 <= keep <= 1:
            raise ReidctlError(f"--jaccard-keep {keep}: must lie in [0, 1] (1 stores every distance)")
        algorithm.check(self)

    @property
    def algorithm(self) -> ClusterAlgorithm:
        """The registered algorithm these options run."""
        return get_algorithm(self.algo)


def jaccard_bound(params: ClusterParams, n: int) -> tuple[float | None, str | None]:
    """The bound on the stored Jaccard distances (None: all below 1) and a sentence for the
    stage's output when the algorithm's default chose one (DBSCAN beyond
    :data:`~reidctl.cluster.algorithms.dbscan.FULL_JACCARD_ROWS` images)."""
    if params.jaccard_keep is not None:
        return (None if params.jaccard_keep >= 1 else float(params.jaccard_keep)), None
    return params.algorithm.default_keep(params, n)


def cluster_features(feats: np.ndarray, params: ClusterParams, parts: np.ndarray | None = None) -> dict[str, Any] | None:
    """Cluster L2-normalised features with the registered algorithm ``params.algo``; returns the
    labels, kNN lists, the sparse distance the labels were clustered on (under the algorithm's
    ``distance_name``, also given as ``distance``: ``jaccard`` for the CC family,
    ``link_distance`` for InfoMap), timings, and the kNN backend that searched (``knn_backend``,
    exact where ``auto``'s tuning fell back; ``knn_note`` says why when ``auto`` left exact
    search, else None); an approximate search adds its recall probe (``knn_probe``, ``knn_tuning``,
    ``knn_recall_note``: :meth:`reidctl.search.Searched.report`).

    With several ``params.branches`` (``parts``: the N×P×D part features) the distance is the
    weighted mixture of each branch's Jaccard distance, and the kNN lists are the first branch's.
    Under ``torchrun`` the ranks share the kNN search; every rank but 0 then returns None.
    """
    params.check()
    n = len(feats)
    if n <= params.k1:
        raise ReidctlError(f"{n} samples are too few for --k1 {params.k1} (need more samples than k1)")
    backend, note = choose_backend(n, feats.shape[1], params.knn_backend, params.device)
    keep, keep_note = jaccard_bound(params, n)
    chosen = {"knn_backend": backend, "knn_note": note, "jaccard_keep": keep, "jaccard_note": keep_note}
    algorithm = params.algorithm
    res = algorithm.run(feats, params, parts=parts, keep=keep)
    if res is None:
        return None
    return {"labels": res.labels, "knn_index": res.knn_index, "knn_dist": res.knn_dist,
            algorithm.distance_name: res.distance, "distance": algorithm.distance_name, "times": res.times,
            **chosen, **res.searched, "searched": res.searched}


def size_choices(res: dict[str, Any]) -> dict[str, Any]:
    """What the stage chose for the data's size, for its summary: ``knn_backend``, ``jaccard_keep``
    (None: all distances below 1 stored), ``knn_note`` / ``jaccard_note`` when a default left
    exact search or bounded the distances (every ``*_note`` is said by the commands and the loop),
    and an approximate search's recall probe (``knn_probe``), tuning (``knn_tuning``) and
    ``knn_recall_note`` when it fell back to exact search or stayed below ``--knn-recall``."""
    notes = {name: res[name] for name in ("knn_note", "jaccard_note") if res.get(name)}
    return {"knn_backend": res["knn_backend"], "jaccard_keep": res.get("jaccard_keep"), **notes,
            **res.get("searched", {})}
