"""The `cluster` stage: features.h5 → labels.h5 (labels, neighbour lists, sparse Jaccard)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from reidctl.artifacts import LABELS, check_output, read_features, read_ground_truth, write_labels
from reidctl.cluster.agglomerative import agglomerative
from reidctl.cluster.dbscan import dbscan
from reidctl.cluster.jaccard import jaccard_distance
from reidctl.cluster.mixing import branch_features, mix_jaccard, parse_branches
from reidctl.cluster.report import labels_report
from reidctl.errors import ReidctlError, naming
from reidctl.options import option
from reidctl.progress import callback, progress_bar
from reidctl.search import knn

ALGOS = ("dbscan", "agglomerative")


@dataclass
class ClusterParams:
    """Defaults of the Cluster Contrast commands (ALGORITHMS.md §3.3-3.4, §9)."""

    algo: str = field(default="dbscan", metadata=option(
        "Clustering: dbscan (the CC family) or agglomerative (average linkage, icrefine).",
        aliases=("--global-clustering",)))
    k1: int = field(default=30, metadata=option("Neighbourhood size of the k-reciprocal Jaccard distance."))
    k2: int = field(default=6, metadata=option("Query-expansion size of the Jaccard distance (1 = none)."))
    eps: float = field(default=0.6, metadata=option("DBSCAN radius on the Jaccard distance."))
    min_samples: int = field(default=4, metadata=option("DBSCAN core-point size (counts the point itself)."))
    n_clusters: int | None = field(default=None, metadata=option(
        "Clusters of average-linkage clustering (icrefine: 800, the paper's Market value, or N/5 when smaller; "
        "MSMT17: 1200)."))
    jaccard_variant: str = field(default="cc", metadata=option(
        "cc (k1 columns incl. self, the official code) or original (Zhong et al., k1+1)."))
    knn_backend: str = field(default="auto", metadata=option("Exact kNN backend: auto, torch or faiss (faiss-gpu)."))
    device: str = "auto"  # set by the command's --device
    branches: str = field(default="global", metadata=option(
        "Feature branches and weights of the distance: global, or e.g. global=0.6,part0=0.2,part1=0.2 "
        "(NCPLR's mixture, ALGORITHMS.md §7.2)."))

    def check(self) -> None:
        if self.algo not in ALGOS:
            raise ReidctlError(f"--algo {self.algo}: choose dbscan or agglomerative")
        if self.algo == "agglomerative" and not self.n_clusters:
            raise ReidctlError("--algo agglomerative needs --n-clusters")
        if self.k1 < 2 or self.k2 < 1:
            raise ReidctlError("--k1 must be at least 2 and --k2 at least 1")
        if self.algo == "dbscan" and not 0 < self.eps < 1:
            raise ReidctlError("--eps must lie in (0, 1): the Jaccard distance is 1 beyond the neighbourhoods")
        parse_branches(self.branches)


def cluster_features(feats: np.ndarray, params: ClusterParams, parts: np.ndarray | None = None) -> dict[str, Any]:
    """Cluster L2-normalised features; returns labels, kNN lists, the sparse Jaccard and timings.

    With several ``params.branches`` (``parts``: the N×P×D part features) the distance is the
    weighted mixture of each branch's Jaccard distance, and the kNN lists are the first branch's.
    """
    params.check()
    n = len(feats)
    if n <= params.k1:
        raise ReidctlError(f"{n} samples are too few for --k1 {params.k1} (need more samples than k1)")
    if params.algo == "agglomerative" and params.n_clusters > n:
        raise ReidctlError(f"--n-clusters {params.n_clusters} exceeds the number of samples ({n})")
    branches = parse_branches(params.branches)
    # every branch's features before any work: a missing part fails at once
    inputs = [feats if name == "global" else branch_features(name, feats, parts) for name, _ in branches]
    times: dict[str, float] = {}
    if len(branches) == 1:  # one Jaccard, used as it is (the default: exactly Cluster Contrast)
        dist, idx, jac = _branch_jaccard(inputs[0], params, times)
    else:
        dist, idx, jac = _mixed_jaccard([name for name, _ in branches], inputs,
                                        [w for _, w in branches], params, times)
    t = time.perf_counter()
    if params.algo == "dbscan":
        labels = dbscan(jac, params.eps, params.min_samples)
    else:
        labels = agglomerative(jac, params.n_clusters)
    times["cluster_s"] = time.perf_counter() - t
    return {"labels": np.asarray(labels, dtype=np.int32), "knn_index": idx.astype(np.int32),
            "knn_dist": dist.astype(np.float32), "jaccard": jac, "times": times}


def _branch_jaccard(x: np.ndarray, params: ClusterParams, times: dict[str, float],
                    name: str = "") -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """kNN lists and sparse Jaccard distance of one feature matrix; adds its timings to ``times``
    (``knn_s``/``jaccard_s``, and ``knn_<name>_s``/``jaccard_<name>_s`` for a named branch)."""
    n, label = len(x), f" {name}" if name else ""
    t = time.perf_counter()
    k_search = params.k1 + 1 if params.jaccard_variant == "original" else params.k1
    with progress_bar(f"kNN{label}", n) as advance:
        dist, idx = knn(x, k_search, backend=params.knn_backend, device=params.device, progress=callback(advance))
    _add_time(times, "knn", name, time.perf_counter() - t)
    t = time.perf_counter()
    with progress_bar(f"Jaccard{label}", n) as advance:
        jac = jaccard_distance(x, params.k1, params.k2, variant=params.jaccard_variant, knn=(dist, idx),
                               progress=callback(advance))
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


def _add_time(times: dict[str, float], step: str, name: str, seconds: float) -> None:
    """Record ``<step>_<name>_s`` and add to the ``<step>_s`` total the CLI table shows."""
    if name:
        times[f"{step}_{name}_s"] = seconds
    times[f"{step}_s"] = times.get(f"{step}_s", 0.0) + seconds


def run_cluster(features_path: str | Path, out: str | Path, params: ClusterParams, *, seed: int = 1,
                force: bool = False) -> dict[str, Any]:
    """Cluster a features file's rows and write a labels artifact (with label quality when pids exist).

    ``out`` must not be the features file, nor an existing file other than a labels artifact
    unless ``force``."""
    params.check()
    check_output(out, schema=LABELS, inputs=(features_path,), force=force)
    fe = read_features(features_path)
    try:
        res = cluster_features(fe.feats, params, parts=fe.parts)
    except ReidctlError as exc:
        raise naming(features_path, exc) from None
    labels = res["labels"]
    summary: dict[str, Any] = {"rows": len(labels), **{k: round(v, 3) for k, v in res["times"].items()},
                               **labels_report(labels, fe.camids, read_ground_truth(features_path))}
    write_labels(
        out, labels, paths=fe.paths,
        extra={"knn_index": res["knn_index"], "knn_dist": res["knn_dist"], "jaccard": res["jaccard"]},
        params={"stage": "cluster", **asdict(params)}, inputs={"features": fe.meta.digest}, seed=seed,
        attrs={"summary": summary},
    )
    return summary
