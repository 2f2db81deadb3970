"""The `cluster` stage: features.h5 → labels.h5 (labels, neighbour lists, sparse Jaccard)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reidctl.artifacts import LABELS, check_output, read_features, read_ground_truth, write_labels
from reidctl.cluster.agglomerative import agglomerative
from reidctl.cluster.dbscan import dbscan
from reidctl.cluster.jaccard import jaccard_distance
from reidctl.cluster.report import labels_report
from reidctl.errors import ReidctlError, naming
from reidctl.progress import callback, progress_bar
from reidctl.search import knn

ALGOS = ("dbscan", "agglomerative")


@dataclass
class ClusterParams:
    """Defaults of the Cluster Contrast commands (ALGORITHMS.md §3.3-3.4, §9)."""

    algo: str = "dbscan"
    k1: int = 30
    k2: int = 6
    eps: float = 0.6
    min_samples: int = 4
    n_clusters: int | None = None
    jaccard_variant: str = "cc"
    knn_backend: str = "auto"
    device: str = "auto"

    def check(self) -> None:
        if self.algo not in ALGOS:
            raise ReidctlError(f"--algo {self.algo}: choose dbscan or agglomerative")
        if self.algo == "agglomerative" and not self.n_clusters:
            raise ReidctlError("--algo agglomerative needs --n-clusters")
        if self.k1 < 2 or self.k2 < 1:
            raise ReidctlError("--k1 must be at least 2 and --k2 at least 1")
        if self.algo == "dbscan" and not 0 < self.eps < 1:
            raise ReidctlError("--eps must lie in (0, 1): the Jaccard distance is 1 beyond the neighbourhoods")


def cluster_features(feats: np.ndarray, params: ClusterParams) -> dict[str, Any]:
    """Cluster L2-normalised features; returns labels, kNN lists, the sparse Jaccard and timings."""
    params.check()
    n = len(feats)
    if n <= params.k1:
        raise ReidctlError(f"{n} samples are too few for --k1 {params.k1} (need more samples than k1)")
    times = {}
    t = time.perf_counter()
    k_search = params.k1 + 1 if params.jaccard_variant == "original" else params.k1
    with progress_bar("kNN", n) as advance:
        dist, idx = knn(feats, k_search, backend=params.knn_backend, device=params.device, progress=callback(advance))
    times["knn_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with progress_bar("Jaccard", n) as advance:
        jac = jaccard_distance(feats, params.k1, params.k2, variant=params.jaccard_variant, knn=(dist, idx),
                               progress=callback(advance))
    times["jaccard_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if params.algo == "dbscan":
        labels = dbscan(jac, params.eps, params.min_samples)
    else:
        if params.n_clusters > n:
            raise ReidctlError(f"--n-clusters {params.n_clusters} exceeds the number of samples ({n})")
        labels = agglomerative(jac, params.n_clusters)
    times["cluster_s"] = time.perf_counter() - t
    return {"labels": np.asarray(labels, dtype=np.int32), "knn_index": idx.astype(np.int32),
            "knn_dist": dist.astype(np.float32), "jaccard": jac, "times": times}


def run_cluster(features_path: str | Path, out: str | Path, params: ClusterParams, *, seed: int = 1,
                force: bool = False) -> dict[str, Any]:
    """Cluster a features file's rows and write a labels artifact (with label quality when pids exist).

    ``out`` must not be the features file, nor an existing file other than a labels artifact
    unless ``force``."""
    params.check()
    check_output(out, schema=LABELS, inputs=(features_path,), force=force)
    fe = read_features(features_path)
    try:
        res = cluster_features(fe.feats, params)
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
