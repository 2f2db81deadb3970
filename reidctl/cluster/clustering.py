"""Clustering features into pseudo identities: the options (:class:`ClusterParams`) and
:func:`cluster_features` (labels, neighbour lists, the sparse distance).

Algorithms: DBSCAN or average linkage on the k-reciprocal Jaccard distance (the CC family,
icrefine), or InfoMap on the cosine kNN graph (Cluster Contrast's InfoMap variant,
:mod:`reidctl.cluster.infomap`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, overload

import numpy as np
import scipy.sparse as sp
import torch

from reidctl.cluster.agglomerative import agglomerative
from reidctl.cluster.dbscan import dbscan
from reidctl.cluster.infomap import (INFOMAP_SEED, drop_small, infomap_links, infomap_modules, link_distances,
                                     require_infomap)
from reidctl.cluster.jaccard import jaccard_distance
from reidctl.cluster.mixing import branch_features, mix_jaccard, parse_branches
from reidctl.errors import ReidctlError
from reidctl.options import check_finite, not_applicable, option
from reidctl.progress import callback, progress_bar
from reidctl.runtime import dist as ddp  # (``dist`` names the kNN distances here)
from reidctl.search import KNN_BACKENDS, choose_backend, knn
from reidctl.search.approx import APPROX_BACKENDS, require_faiss

ALGOS = ("dbscan", "agglomerative", "infomap")

#: The options whose official value depends on the algorithm: DBSCAN/agglomerative on the
#: Jaccard distance (ALGORITHMS.md §3.3-3.4, §9) and InfoMap (§3.9; the argparse defaults of
#: ``cluster_contrast_train_usl_infomap.py``). An option the user leaves unset takes its
#: algorithm's value here; every other place reads the resolved field.
ALGO_DEFAULTS: dict[str, dict[str, int | float]] = {
    "dbscan": {"k1": 30, "k2": 6, "eps": 0.6, "min_samples": 4},
    "agglomerative": {"k1": 30, "k2": 6, "eps": 0.6, "min_samples": 4},
    "infomap": {"k1": 15, "k2": 4, "eps": 0.5, "min_samples": 4},
}


class _Unset:
    """Marks a value as the algorithm's default, not given by anyone (see :class:`ClusterParams`)."""

    __slots__ = ()


class _UnsetInt(_Unset, int):
    """An int default (``k1``, ``k2``, ``min_samples``)."""

    __slots__ = ()


class _UnsetFloat(_Unset, float):
    """A float default (``eps``)."""

    __slots__ = ()


@overload
def _unset(value: int) -> int: ...
@overload
def _unset(value: float) -> float: ...
def _unset(value: int | float) -> int | float:
    """``value`` as an algorithm default: equal to it in every use (arithmetic, JSON, help
    text), but recognisable as "not given" when the algorithm changes."""
    return _UnsetInt(value) if isinstance(value, int) else _UnsetFloat(value)


def is_default(value: object) -> bool:
    """Whether a :class:`ClusterParams` value is its algorithm's default (no one set it)."""
    return isinstance(value, _Unset)


_DBSCAN = ALGO_DEFAULTS["dbscan"]


@dataclass
class ClusterParams:
    """Defaults of the Cluster Contrast commands (ALGORITHMS.md §3.3-3.4, §3.9, §9).

    ``k1``, ``k2``, ``eps`` and ``min_samples`` default to their algorithm's official value
    (:data:`ALGO_DEFAULTS`). Why values that know they are defaults: the commands and the
    methods build these parameters in layers (``asdict`` of the defaults, then a method's
    official values, then the user's options) and an unset option is simply absent, so the
    algorithm is known only once the instance is built. A default is stored as an int or float
    subclass that survives ``asdict`` and ``replace``; ``__post_init__`` replaces each one by
    the value of the instance's ``algo``, so ``ClusterParams(algo="infomap").k1 == 15`` while
    ``ClusterParams(algo="infomap", k1=30).k1 == 30``, and the resolved numbers are what the
    artifacts and cache keys record.
    """

    algo: str = field(default="dbscan", metadata=option(
        "Clustering: dbscan (the CC family), agglomerative (average linkage, icrefine) or infomap "
        "(Cluster Contrast's InfoMap variant on the cosine kNN graph; pip install 'reidctl[infomap]').",
        aliases=("--global-clustering",)))
    k1: int = field(default=_unset(_DBSCAN["k1"]), metadata=option(
        "Neighbourhood size of the k-reciprocal Jaccard distance; infomap: neighbours searched per image, "
        "itself included (15 with --algo infomap)."))
    k2: int = field(default=_unset(_DBSCAN["k2"]), metadata=option(
        "Query-expansion size of the Jaccard distance (1 = none); infomap: clusters of at most k2 images "
        "become outliers (4 with --algo infomap)."))
    eps: float = field(default=_unset(_DBSCAN["eps"]), metadata=option(
        "DBSCAN radius on the Jaccard distance; infomap: the cosine similarity a neighbour needs to be "
        "linked (0.5 with --algo infomap)."))
    min_samples: int = field(default=_unset(_DBSCAN["min_samples"]), metadata=option(
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
    jaccard_keep: float | None = field(default=None, metadata=option(
        "Store only Jaccard distances up to this value (the others read as 1, as beyond the neighbourhoods); "
        "1 stores all. Default: all up to 200,000 images, and --eps with DBSCAN beyond (the same clusters; "
        "the full matrix holds about 2,000 entries a row, 16 GB at a million images)."))
    device: str = "auto"  # set by the command's --device
    branches: str = field(default="global", metadata=option(
        "Feature branches and weights of the distance: global, or e.g. global=0.6,part0=0.2,part1=0.2 "
        "(NCPLR's mixture, ALGORITHMS.md §7.2)."))

    def __post_init__(self) -> None:
        """Unset options take the algorithm's defaults; InfoMap's refusals and its package are
        checked here, when the loop builds its parameters, so they fail before any stage runs."""
        for name, value in ALGO_DEFAULTS.get(self.algo, {}).items():
            if is_default(getattr(self, name)):
                setattr(self, name, _unset(value))
        if self.algo == "infomap":
            # a value InfoMap would ignore is refused, so no one believes it changed the clusters;
            # --min-samples at its default value changes nothing and passes (a run's saved
            # config.toml lists every clustering option)
            ignored = {"min_samples": self.min_samples != ALGO_DEFAULTS["infomap"]["min_samples"],
                       "n_clusters": self.n_clusters is not None, "jaccard_keep": self.jaccard_keep is not None}
            given = [name for name, differs in ignored.items() if differs and not is_default(getattr(self, name))]
            if given:
                raise not_applicable(given, "--algo infomap")
            if self.branches != "global":
                raise ReidctlError(f"--algo infomap clusters the global features only: --branches {self.branches} "
                                   "(a mixture of Jaccard distances) does not apply")
            require_infomap()

    def check(self) -> None:
        check_finite(self)  # (also for params built without resolve(): a loop's default_cluster_params)
        if self.algo not in ALGOS:
            raise ReidctlError(f"--algo {self.algo}: choose dbscan, agglomerative or infomap")
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ReidctlError(f"--n-clusters must be at least 1 (got {self.n_clusters})")
        if self.algo == "agglomerative" and not self.n_clusters:
            raise ReidctlError("--algo agglomerative needs --n-clusters")
        if self.knn_backend not in KNN_BACKENDS:
            raise ReidctlError(f"--knn-backend {self.knn_backend}: choose one of {', '.join(KNN_BACKENDS)}")
        if self.knn_backend in APPROX_BACKENDS:
            require_faiss(self.knn_backend)
        if self.algo == "infomap":
            if self.k1 < 2 or self.k2 < 0:
                raise ReidctlError("--k1 must be at least 2 and --k2 at least 0 with --algo infomap")
            if not 0 < self.eps < 1:
                raise ReidctlError("--eps must lie in (0, 1) with --algo infomap: it is the cosine similarity "
                                   "a neighbour needs to be linked")
            return
        if self.k1 < 2 or self.k2 < 1:
            raise ReidctlError("--k1 must be at least 2 and --k2 at least 1")
        if self.algo == "dbscan" and not 0 < self.eps < 1:
            raise ReidctlError("--eps must lie in (0, 1): the Jaccard distance is 1 beyond the neighbourhoods")
        self._check_keep()
        parse_branches(self.branches)

    def _check_keep(self) -> None:
        """A bound that would change the clusters is refused: DBSCAN reads the distances up to
        --eps, average linkage all of them."""
        keep = self.jaccard_keep
        if keep is not None and not 0 <= keep <= 1:
            raise ReidctlError(f"--jaccard-keep {keep}: must lie in [0, 1] (1 stores every distance)")
        if keep is None or keep == 1:
            return
        if self.algo == "agglomerative":
            raise ReidctlError("--jaccard-keep below 1 does not apply to --algo agglomerative: average linkage "
                               "reads every distance")
        if keep < self.eps:
            raise ReidctlError(f"--jaccard-keep {keep} is below --eps {self.eps}: DBSCAN would lose neighbours "
                               "and the clusters would change")


#: Beyond this many images DBSCAN's labels keep only the Jaccard distances up to --eps unless
#: --jaccard-keep says otherwise: on CNN features the full matrix holds ≈ 2,000 entries a row
#: (measured on 97k images, bench/README.md), 1.6 GB at 100k and 16 GB at 1M, while DBSCAN
#: reads ≈ 5 a row.
FULL_JACCARD_ROWS = 200_000


def jaccard_bound(params: ClusterParams, n: int) -> tuple[float | None, str | None]:
    """The bound on the stored Jaccard distances (None: all below 1) and a sentence for the
    stage's output when the default chose one."""
    if params.jaccard_keep is not None:
        return (None if params.jaccard_keep >= 1 else float(params.jaccard_keep)), None
    if params.algo != "dbscan" or n <= FULL_JACCARD_ROWS:
        return None, None
    return float(params.eps), (f"{n:,} images: the labels keep only the Jaccard distances ≤ {params.eps} (--eps), "
                               "all DBSCAN reads; --jaccard-keep 1 keeps all of them")


def cluster_features(feats: np.ndarray, params: ClusterParams, parts: np.ndarray | None = None) -> dict[str, Any] | None:
    """Cluster L2-normalised features; returns labels, kNN lists, the sparse distance the labels
    were clustered on (under ``jaccard``, the name labels files and NCPLR's refinement read),
    timings, and the kNN backend used (``knn_backend``; ``knn_note`` says why when ``auto``
    left exact search, else None).

    With several ``params.branches`` (``parts``: the N×P×D part features) the distance is the
    weighted mixture of each branch's Jaccard distance, and the kNN lists are the first branch's.
    Under ``torchrun`` the ranks share the kNN search (:func:`stage_knn`); every rank but 0 then
    returns None.
    InfoMap computes no Jaccard distance: its ``jaccard`` is the graph it clustered
    (:func:`reidctl.cluster.infomap.link_distances`, 1 − cos on each link).
    """
    params.check()
    n = len(feats)
    if n <= params.k1:
        raise ReidctlError(f"{n} samples are too few for --k1 {params.k1} (need more samples than k1)")
    backend, note = choose_backend(n, feats.shape[1], params.knn_backend, params.device)
    keep, keep_note = jaccard_bound(params, n)
    chosen = {"knn_backend": backend, "knn_note": note, "jaccard_keep": keep, "jaccard_note": keep_note}
    params = replace(params, knn_backend=backend)  # every rank and branch searches with the same one
    if params.algo == "infomap":
        res = _infomap(feats, params)
        return res and {**res, **chosen}
    if params.algo == "agglomerative" and params.n_clusters > n:
        raise ReidctlError(f"--n-clusters {params.n_clusters} exceeds the number of samples ({n})")
    branches = parse_branches(params.branches)
    # every branch's features before any work: a missing part fails at once
    inputs = [feats if name == "global" else branch_features(name, feats, parts) for name, _ in branches]
    times: dict[str, float] = {}
    if len(branches) == 1:  # one Jaccard, used as it is (the default: exactly Cluster Contrast)
        dist, idx, jac = _branch_jaccard(inputs[0], params, times, keep=keep)
    else:  # each branch whole: a bound applies to the mixture only
        dist, idx, jac = _mixed_jaccard([name for name, _ in branches], inputs,
                                        [w for _, w in branches], params, times)
        jac = _bounded(jac, keep)
    if not ddp.is_main():
        return None  # under torchrun the ranks shared the kNN search; rank 0 clusters and writes
    t = time.perf_counter()
    if params.algo == "dbscan":
        labels = dbscan(jac, params.eps, params.min_samples)
    else:
        labels = agglomerative(jac, params.n_clusters)
    times["cluster_s"] = time.perf_counter() - t
    return {"labels": np.asarray(labels, dtype=np.int32), "knn_index": idx.astype(np.int32),
            "knn_dist": dist.astype(np.float32), "jaccard": jac, "times": times, **chosen}


def _infomap(feats: np.ndarray, params: ClusterParams) -> dict[str, Any]:
    """InfoMap on the cosine kNN graph of the global features (:mod:`reidctl.cluster.infomap`)."""
    n = len(feats)
    times: dict[str, float] = {}
    t = time.perf_counter()
    dist, idx = stage_knn(feats, params.k1, params)
    times["knn_s"] = time.perf_counter() - t
    if not ddp.is_main():
        return None
    times["jaccard_s"] = 0.0  # none computed: InfoMap clusters the kNN graph itself
    t = time.perf_counter()
    links = infomap_links(dist, idx, params.eps)
    labels = drop_small(infomap_modules(n, links, seed=INFOMAP_SEED), params.k2)
    times["cluster_s"] = time.perf_counter() - t
    return {"labels": labels.astype(np.int32), "knn_index": idx.astype(np.int32), "knn_dist": dist.astype(np.float32),
            "jaccard": link_distances(n, links), "times": times}


def stage_knn(x: np.ndarray, k: int, params: ClusterParams, label: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The kNN lists of the cluster stage. Under ``torchrun`` each rank searches its block of query
    rows against all rows and every rank gets the whole lists, in row order: the same lists as
    one process (the search is row-wise, with a tie rule that does not depend on the blocks)."""
    n = len(x)
    sharded = ddp.is_distributed()
    lo, hi = ddp.shard_range(n) if sharded else (0, n)
    shown = f" ({params.knn_backend})" if params.knn_backend in APPROX_BACKENDS else ""
    with progress_bar(f"kNN{label}{shown}", hi - lo, unit="rows") as advance:
        d, i = knn(x, k, backend=params.knn_backend, device=params.device, progress=callback(advance),
                   rows=(lo, hi) if sharded else None)
    if sharded:
        d = ddp.all_gather_rows(torch.from_numpy(np.ascontiguousarray(d))).numpy()
        i = ddp.all_gather_rows(torch.from_numpy(np.ascontiguousarray(i))).numpy()
    return d, i


def _branch_jaccard(x: np.ndarray, params: ClusterParams, times: dict[str, float],
                    name: str = "", keep: float | None = None) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """kNN lists and sparse Jaccard distance of one feature matrix; adds its timings to ``times``
    (``knn_s``/``jaccard_s``, and ``knn_<name>_s``/``jaccard_<name>_s`` for a named branch)."""
    n, label = len(x), f" {name}" if name else ""
    t = time.perf_counter()
    k_search = params.k1 + 1 if params.jaccard_variant == "original" else params.k1
    dist, idx = stage_knn(x, k_search, params, label)
    _add_time(times, "knn", name, time.perf_counter() - t)
    if not ddp.is_main():
        return dist, idx, sp.csr_matrix((n, n), dtype=np.float32)  # rank 0 alone goes on
    t = time.perf_counter()
    with progress_bar(f"Jaccard{label}", 2 * n, unit="rows") as advance:  # two passes over the rows
        jac = jaccard_distance(x, params.k1, params.k2, variant=params.jaccard_variant, knn=(dist, idx),
                               progress=callback(advance), keep=keep)
    _add_time(times, "jaccard", name, time.perf_counter() - t)
    return dist, idx, jac


def _mixed_jaccard(names: list[str], inputs: list[np.ndarray], weights: list[float], params: ClusterParams,
                   times: dict[str, float]) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """The first branch's kNN lists and Σ_b w_b·J_b (ALGORITHMS.md §7.2), one branch at a time."""
    results = [_branch_jaccard(x, params, times, name) for name, x in zip(names, inputs)]
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


def size_choices(res: dict[str, Any]) -> dict[str, Any]:
    """What the stage chose for the data's size, for its summary: ``knn_backend``, ``jaccard_keep``
    (None: all distances below 1 stored), and ``knn_note`` / ``jaccard_note`` when a default left
    exact search or bounded the distances (every ``*_note`` is said by the commands and the loop)."""
    notes = {name: res[name] for name in ("knn_note", "jaccard_note") if res.get(name)}
    return {"knn_backend": res["knn_backend"], "jaccard_keep": res.get("jaccard_keep"), **notes}
