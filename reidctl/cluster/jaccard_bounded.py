"""The k-reciprocal Jaccard distance restricted to the pairs at most a bound apart.

Why: beyond 200,000 images the cluster stage stores only J ≤ --eps (all DBSCAN reads), about 5
entries a row of the ≈ 2,000 below 1. The full min-sum enumerates every (i, k, j) with V_ik and
V_jk stored, 8,000-16,000 a row on CNN features, in numpy passes: at N = 1M it took most of the
stage's time. Here a bound finds the few pairs that can reach the threshold, and only those are
summed exactly.

J_ij = 1 − m/(2 − m) ≤ keep  ⟺  m_ij = Σ_k min(V_ik, V_jk) ≥ t = 2(1 − keep)/(2 − keep).
Since min(a, b) ≤ √(a·b), m_ij ≤ Σ_k √V_ik·√V_jk, the (i, j) entry of the sparse product
√V·√Vᵀ, which scipy computes in compiled code, by blocks of rows. Pairs whose bound reaches t
(less a slack for rounding) are the candidates; each is summed exactly, in ascending k in
float64 like :func:`reidctl.cluster.jaccard._min_sum_block`, so the stored values are bit for
bit those of the full computation and the matrix is exactly symmetric.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from reidctl.cluster.threads import ordered_map

# Rows of √V multiplied at once: the product's block holds ≈ 2,000 entries a row on CNN features.
_ROWS_PER_BLOCK = 4096
# Rows i whose V rows form one dense lookup table when their candidate pairs are summed.
_TABLE_ROWS = 128
# Slack below the threshold t: the bound is summed in float32 (≈ 75 terms of at most 1, error
# below 1e-5); it must not drop a pair, and a lower threshold only adds candidates.
_SLACK = 1e-4


def bounded_min_sum(v: sp.csr_matrix, keep: float, tick: Callable[[int], None],
                    workers: int = 1) -> sp.csr_matrix:
    """J from V (N×N CSR, sorted indices) with only its entries ≤ ``keep`` and the diagonal (0)
    stored: equal, entry for entry, to the full min-sum's entries ≤ ``keep``."""
    n = v.shape[0]
    root = v.astype(np.float32)  # float32: at N = 1M each copy of V is 0.9 GB
    root.data = np.sqrt(root.data)
    root_t = root.T.tocsr()
    t = 2 * (1 - keep) / (2 - keep) - _SLACK
    rows = (v.indptr, v.indices, v.data.astype(np.float32, copy=False), np.diff(v.indptr))
    counts = np.zeros(n, np.int64)
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    starts = range(0, n, _ROWS_PER_BLOCK)
    local = threading.local()

    def block(s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not hasattr(local, "slot"):  # per-thread scratch over the columns
            local.slot = np.full(n, -1, np.int64)
        e = min(n, s + _ROWS_PER_BLOCK)
        bound = (root[s:e] @ root_t).tocoo()  # scipy's product runs without the GIL
        near = bound.data >= t
        pi = bound.row[near].astype(np.int64) + s
        pj = bound.col[near].astype(np.int64)
        del bound
        return _exact(rows, pi, pj, s, e, n, np.float32(keep), local.slot)

    for s, (cnt, c, j) in ordered_map(block, starts, workers):
        e = min(n, s + _ROWS_PER_BLOCK)
        counts[s:e] = cnt
        cols.append(c)
        vals.append(j)
        tick(e)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.concatenate(cols) if cols else np.empty(0, np.int32)
    data = np.concatenate(vals) if vals else np.empty(0, np.float32)
    if len(indices) < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))


def _exact(rows: tuple[np.ndarray, ...], pi: np.ndarray, pj: np.ndarray, s: int, e: int, n: int,
           keep: np.float32, slot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows s..e of the bounded J from candidate pairs (pi, pj): (entries per row, columns int32,
    values float32), the diagonal always stored as 0. ``slot``: a per-thread int64 scratch over
    the N columns, all −1 (and left so)."""
    keys = np.unique(np.concatenate([pi * n + pj, np.arange(s, e, dtype=np.int64) * (n + 1)]))
    pi, pj = np.divmod(keys, n)
    m = np.empty(len(keys))
    edges = np.searchsorted(pi, np.arange(s, e + _TABLE_ROWS, _TABLE_ROWS).clip(max=e))
    for a, b in zip(edges[:-1], edges[1:]):
        m[a:b] = _overlaps(rows, pi[a:b], pj[a:b], slot)
    mm = m.astype(np.float32)
    j = np.float32(1) - mm / (np.float32(2) - mm)
    np.maximum(j, 0, out=j)
    diag = pi == pj
    j[diag] = 0
    stored = ((j <= keep) & (m != 0)) | diag
    pi, pj, j = pi[stored], pj[stored], j[stored]
    return np.bincount(pi - s, minlength=e - s), pj.astype(np.int32), j


def _overlaps(rows: tuple[np.ndarray, ...], pi: np.ndarray, pj: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """m_ij = Σ_k min(V_ik, V_jk) of pairs whose rows i are a few consecutive ones (sorted pi).

    The rows i are laid out in a dense table over the columns they use; each pair walks j's
    entries in ascending k and reads V_ik from it (0 where i has no entry: adding min(·, 0) = 0
    leaves a float64 sum unchanged), accumulating in float64 in that order, as the full min-sum
    does for the shared columns (the minimum of two float32 values is the same number in
    float64)."""
    indptr, indices, data, rlen = rows
    if len(pi) == 0:
        return np.empty(0)
    first, last = int(pi[0]), int(pi[-1]) + 1
    lo, hi = indptr[first], indptr[last]
    own = indices[lo:hi]
    used = np.unique(own)
    slot[used] = np.arange(len(used))
    table = np.zeros((last - first, len(used)), np.float32)
    table[np.repeat(np.arange(last - first), rlen[first:last]), slot[own]] = data[lo:hi]
    jl = rlen[pj]
    at = np.repeat(indptr[pj] - (np.cumsum(jl) - jl), jl) + np.arange(int(jl.sum()))
    col = slot[indices[at]]
    shared = col >= 0
    slot[used] = -1
    owner = np.repeat(np.arange(len(pi)), jl)[shared]
    mine = table[(pi - first)[owner], col[shared]]
    return np.bincount(owner, weights=np.minimum(data[at][shared], mine), minlength=len(pi))
