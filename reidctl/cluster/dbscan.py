"""DBSCAN on a sparse precomputed distance matrix, numbered exactly like scikit-learn.

Why not call scikit-learn: its sparse path builds one Python array per sample and sorts every
row; the clustering itself is just connected components of the core samples, which scipy's
csgraph does in C. The result equals ``sklearn.cluster.DBSCAN(eps, min_samples,
metric="precomputed").fit_predict`` on the dense matrix (missing entries = 1), ids included:
sklearn numbers clusters in the order of their smallest core sample, and a border sample takes
the smallest id among the clusters of its core neighbours (the first expansion that reaches it).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from reidctl.errors import ReidctlError


def dbscan(dist: sp.spmatrix | sp.sparray | np.ndarray, eps: float,
           min_samples: int = 4) -> np.ndarray:
    """Cluster labels (int64, −1 = outlier) of DBSCAN on a precomputed distance matrix.

    ``dist`` is sparse with every entry below 1 stored (as :func:`jaccard_distance` returns;
    explicit zeros are neighbours, missing entries are distance 1) or a dense array.
    A sample is its own neighbour (``min_samples`` counts it). For a sparse matrix eps must be
    below 1, otherwise the missing entries (= 1) would be neighbours too.
    """
    if min_samples < 1:
        raise ReidctlError(f"min_samples must be at least 1, got {min_samples}")
    if sp.issparse(dist):
        if not 0 <= eps < 1:
            raise ReidctlError(
                f"eps={eps} is not below 1: entries missing from the sparse distance matrix "
                "(distance 1) would count as neighbours; use eps < 1"
            )
        adj = _within(sp.csr_matrix(dist), eps)
    else:
        d = np.asarray(dist)
        adj = sp.csr_matrix(d <= eps)
    n = adj.shape[0]
    if adj.shape != (n, n):
        raise ReidctlError(f"distance matrix must be square, got shape {adj.shape}")
    if (adj != adj.T).nnz:  # asymmetric neighbourhoods: sklearn's visiting order matters
        return _sklearn_dbscan(dist, eps, min_samples)

    core = np.diff(adj.indptr) >= min_samples
    labels = np.full(n, -1, np.int64)
    core_idx = np.flatnonzero(core)
    if not len(core_idx):
        return labels
    # the graph of core-to-core links (other samples become isolated nodes, ignored below)
    row_core = np.repeat(core, np.diff(adj.indptr))
    link = np.flatnonzero(row_core & core[adj.indices])
    graph = sp.csr_matrix(
        (np.ones(len(link), bool), adj.indices[link], np.searchsorted(link, adj.indptr)),
        shape=adj.shape,
    )
    _, comp = connected_components(graph, directed=False)
    comp = comp[core_idx]
    # number components by their smallest core sample (core_idx is ascending)
    first = np.full(comp.max() + 1, n, np.int64)
    np.minimum.at(first, comp, core_idx)
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(len(first))
    labels[core_idx] = rank[comp]
    # border samples: the smallest cluster id among their core neighbours
    border = np.flatnonzero(~core)
    if len(border):
        sub = adj[border].tocsr()
        cl = labels[sub.indices]
        big = np.int64(n + 1)
        sub = sp.csr_matrix(
            (np.where(cl >= 0, big - cl, 0), sub.indices, sub.indptr), shape=sub.shape
        )
        best = sub.max(axis=1).toarray().ravel()
        labels[border] = np.where(best > 0, big - best, -1)
    return labels


def _within(d: sp.csr_matrix, eps: float) -> sp.csr_matrix:
    """Boolean adjacency of the stored entries ≤ eps.

    Like sklearn (``X.setdiag(X.diagonal())``), a missing diagonal entry counts as 0, so each
    sample is its own neighbour unless a stored diagonal exceeds eps.
    """
    n = d.shape[0]
    kept = np.flatnonzero(d.data <= eps)  # usually a small fraction of the entries
    indptr = np.searchsorted(kept, d.indptr)
    adj = sp.csr_matrix((np.ones(len(kept), bool), d.indices[kept], indptr), shape=d.shape)
    self_loop = np.flatnonzero(d.diagonal() <= eps) if n == d.shape[1] else np.zeros(0, int)
    eye = sp.csr_matrix((np.ones(len(self_loop), bool), (self_loop, self_loop)), shape=d.shape)
    return (adj + eye).tocsr()  # canonical: duplicates merged


def _sklearn_dbscan(dist, eps: float, min_samples: int) -> np.ndarray:
    from sklearn.cluster import DBSCAN  # noqa: PLC0415

    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dist)
