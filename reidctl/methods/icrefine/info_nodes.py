"""Information nodes (ALGORITHMS.md §5.4): central images whose intra-camera cluster is
trusted to prune the same-camera part of their global cluster.

Why a separate kNN graph: the score and the Infomap graph look at the plain cosine neighbours
(k = 15, self included in the search), not at the Jaccard distance the global clustering uses.

* Links: for image i, walk its neighbours by ascending cosine distance d = 1 − cos, skip i
  itself and stop at the first with d > 1 − min_sim; each accepted j is a directed link
  i → j of weight 1 − d.
* Score (harmonic-centrality-like): score_i = Σ over i's accepted links of 1 / (d_ij + mean_d),
  mean_d the mean of all N·k kNN distances (self distances included). Images without an
  accepted neighbour score 0.
* Selection, threshold = the mean score over all N images:
  ``per-cluster`` (what the released code does): Infomap (two-level, directed) on the links;
  modules with more than ``min_size`` members; in each, the *last* member in ascending index
  order whose score exceeds the threshold, so at most one node per module; modules in
  Infomap's order (its module numbering).
  ``all`` (the paper's description): every image whose score exceeds the threshold, in
  ascending index order; Infomap is not run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reidctl import search
from reidctl.cluster.infomap import INFOMAP_SEED, infomap_modules  # the seed: Infomap's own default
from reidctl.errors import ReidctlError

MODES = ("per-cluster", "all")


@dataclass
class Links:
    """The accepted neighbour links and each image's score."""

    src: np.ndarray  # E int64
    dst: np.ndarray  # E int64
    weight: np.ndarray  # E float64, 1 − d
    score: np.ndarray  # N float64
    mean_distance: float


def cosine_neighbours(feats: np.ndarray, k: int = 15, *, device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """``(d, idx)``: the k nearest neighbours (self included) by cosine distance d = 1 − cos, ascending."""
    n = len(feats)
    dist, idx = search.knn(feats, min(k, n), device=device)
    return np.asarray(dist, np.float64) / 2.0, np.asarray(idx, np.int64)  # squared L2 = 2 − 2cos


def score_links(dist: np.ndarray, idx: np.ndarray, min_sim: float = 0.5) -> Links:
    """Links and scores from kNN lists ``dist`` (1 − cos, ascending per row) and ``idx`` (N×k)."""
    dist = np.asarray(dist, np.float64)
    idx = np.asarray(idx, np.int64)
    if dist.shape != idx.shape or dist.ndim != 2:
        raise ValueError("dist and idx must be N×k arrays of the same shape")
    n = len(idx)
    if n == 0:
        raise ReidctlError("no images to score")
    mean_d = float(dist.mean())
    not_self = idx != np.arange(n)[:, None]
    beyond = not_self & (dist > 1.0 - min_sim)
    accept = not_self & (np.cumsum(beyond, axis=1) == 0)  # stop at the first one beyond the cut
    with np.errstate(divide="ignore"):
        contrib = np.where(accept, 1.0 / (dist + mean_d), 0.0)
    rows, cols = np.nonzero(accept)
    return Links(src=rows.astype(np.int64), dst=idx[rows, cols], weight=1.0 - dist[rows, cols],
                 score=contrib.sum(axis=1), mean_distance=mean_d)


def infomap_clusters(n: int, links: Links, *, min_size: int = 4, seed: int = INFOMAP_SEED) -> np.ndarray:
    """Two-level directed Infomap modules of ``links``: N int64 labels 0.. in Infomap's module
    order; images without links and modules of at most ``min_size`` members get −1."""
    modules = infomap_modules(n, links, seed=seed, needed_by="--info-nodes per-cluster")
    labels = np.full(n, -1, np.int64)
    linked = np.flatnonzero(modules >= 0)
    if len(linked) == 0:
        return labels
    ids, counts = np.unique(modules[linked], return_counts=True)  # ascending = Infomap's module order
    keep = ids[counts > min_size]
    new = np.full(int(ids.max()) + 1, -1, np.int64)
    new[keep] = np.arange(len(keep))
    labels[linked] = new[modules[linked]]
    return labels


def select_information_nodes(score: np.ndarray, clusters: np.ndarray | None = None,
                             mode: str = "per-cluster") -> np.ndarray:
    """Indices of the information nodes, in the order they prune (see the module docstring).

    ``clusters``: the Infomap labels (−1 = in no cluster), needed for ``per-cluster``.
    """
    if mode not in MODES:
        raise ReidctlError(f"--info-nodes {mode}: choose one of {', '.join(MODES)}")
    score = np.asarray(score, np.float64)
    above = score > score.mean()
    if mode == "all":
        return np.flatnonzero(above)
    if clusters is None:
        raise ValueError("per-cluster selection needs the Infomap clusters")
    clusters = np.asarray(clusters, np.int64)
    qualified = np.flatnonzero(above & (clusters >= 0))
    if len(qualified) == 0:
        return np.zeros(0, np.int64)
    last = np.full(int(clusters.max()) + 1, -1, np.int64)
    np.maximum.at(last, clusters[qualified], qualified)  # the highest-index qualifying member wins
    return last[last >= 0]
