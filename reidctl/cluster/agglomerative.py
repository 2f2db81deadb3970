"""Average-linkage agglomerative clustering into a fixed number of clusters (icrefine, §5).

Why scipy directly: ``sklearn.cluster.AgglomerativeClustering(metric="precomputed",
linkage="average")`` itself calls ``scipy.cluster.hierarchy.linkage`` on the upper triangle
of the dense matrix, after building it with ``np.triu_indices`` (two int64 arrays of N²/2
entries: 8.5 GB at MSMT17 scale). Here the condensed matrix is filled straight from the sparse
Jaccard matrix and the tree is cut the way sklearn cuts it, so labels match it id for id.
Average linkage needs all N(N−1)/2 distances as float64, and scipy keeps a working copy, so
the memory is checked before anything is allocated.
"""

from __future__ import annotations

import heapq
import os

import numpy as np
import scipy.sparse as sp
from scipy.cluster.hierarchy import linkage

from reidctl.errors import ReidctlError

_GiB = 1024**3


def available_memory() -> int:
    """Bytes of memory the OS can give us now without swapping (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # noqa: PLC0415

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def linkage_memory(n: int) -> int:
    """Bytes average linkage of n samples needs: the condensed float64 matrix, scipy's copy."""
    return 2 * 8 * (n * (n - 1) // 2) + 64 * n


def check_linkage_memory(n: int, memory_limit: int | None = None) -> None:
    """Fail, saying what would fit, when average linkage of n samples cannot fit in memory.

    Callers that know N early (``loop``, ``refine``) call this before hours of other work.
    """
    need = linkage_memory(n)
    limit = available_memory() if memory_limit is None else memory_limit
    if need > limit:
        fits = int((1 + np.sqrt(1 + limit / 2)) / 2)  # largest n with 8·n(n−1) ≤ limit
        raise ReidctlError(
            f"average-linkage clustering of {n:,} samples needs about {need / _GiB:.1f} GiB "
            f"(all pairwise distances as float64, twice) but only {limit / _GiB:.1f} GiB is "
            f"available, enough for about {fits:,} samples; use DBSCAN, or cluster subsets "
            "(e.g. per camera)"
        )


def agglomerative(
    dist: sp.spmatrix | sp.sparray | np.ndarray,
    n_clusters: int,
    *,
    memory_limit: int | None = None,
) -> np.ndarray:
    """Labels (int64, 0..n_clusters−1) of average-linkage clustering on a precomputed matrix.

    ``dist``: a sparse matrix whose missing entries are 1 (as :func:`jaccard_distance` returns)
    or a dense array; only the upper triangle is read, as sklearn does. ``memory_limit``
    (bytes, default: the memory available now) bounds what may be allocated.
    """
    n = dist.shape[0]
    if dist.shape != (n, n):
        raise ReidctlError(f"distance matrix must be square, got shape {dist.shape}")
    if not 1 <= n_clusters <= n:
        raise ReidctlError(f"n_clusters must be between 1 and {n} (the samples), got {n_clusters}")
    check_linkage_memory(n, memory_limit)
    if n == 1:
        return np.zeros(1, np.int64)
    z = linkage(_condensed(dist), method="average")
    return _cut(z[:, :2].astype(np.int64), n_clusters, n)


def _condensed(dist: sp.spmatrix | sp.sparray | np.ndarray) -> np.ndarray:
    """Upper triangle (i < j) as scipy's condensed float64 vector; missing sparse entries = 1."""
    n = dist.shape[0]
    if sp.issparse(dist):
        y = np.ones(n * (n - 1) // 2, np.float64)
        u = sp.triu(dist, k=1, format="coo")  # keeps explicit zeros
        i, j = u.row.astype(np.int64), u.col.astype(np.int64)
        y[i * n - i * (i + 1) // 2 + (j - i - 1)] = u.data
        return y
    d = np.asarray(dist)
    y = np.empty(n * (n - 1) // 2, np.float64)
    start = 0
    for i in range(n - 1):  # one row slice at a time: no N² index arrays
        y[start : start + n - i - 1] = d[i, i + 1 :]
        start += n - i - 1
    return y


def _cut(children: np.ndarray, n_clusters: int, n: int) -> np.ndarray:
    """Undo the last n_clusters−1 merges; number clusters like sklearn's ``_hc_cut``.

    sklearn keeps the tree's top nodes in a heap (largest node id split first) and numbers the
    final clusters by their position in that heap list; leaves are labelled by the cluster node
    they descend from, found here by pointer doubling instead of a walk per node.
    """
    heads = [-(2 * n - 2)]
    for _ in range(n_clusters - 1):
        a, b = children[-heads[0] - n]
        heapq.heappush(heads, -int(a))
        heapq.heappushpop(heads, -int(b))
    head_ids = -np.asarray(heads, np.int64)
    parent = np.arange(2 * n - 1, dtype=np.int64)
    parent[children.ravel()] = np.repeat(np.arange(n, 2 * n - 1), 2)
    parent[head_ids] = head_ids  # heads are roots
    while True:  # pointer doubling: O(log depth) passes
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    label_of = np.full(2 * n - 1, -1, np.int64)
    label_of[head_ids] = np.arange(len(head_ids))
    return label_of[parent[:n]]
