"""k-reciprocal Jaccard distance (Zhong et al. 2017, as Cluster Contrast computes it), sparse.

Why sparse: J[i, j] < 1 only when i and j share a member of their expanded k-reciprocal sets,
which is O(k²) pairs per row, while the reference code builds three dense N×N matrices (13 GB
at MSMT17 scale). Every step here is a vectorised operation over N·k or N·k² entries (loops
run over blocks of rows only), and the result is bit-for-bit symmetric.

Steps (ALGORITHMS.md §3.3), for each sample i with kNN list R[i] (self first):
1. S_i, its k1-reciprocal set: j = R[i, a], a < k1+1, with i in R[j, :k1+1] (the "cc" variant
   searches only k1 columns, so the slice holds k1 entries; "original" searches k1+1).
2. Expansion: for each c in S_i, H_c = c's reciprocal set with k = round(k1/2); if more than
   2/3 of H_c lies in S_i, add H_c. E_i = sorted union.
3. V[i, E_i] = softmax(-(2 - 2·x_i·x_E)); query expansion V[i] = mean(V[R[i, :k2]]).
4. m_ij = Σ_k min(V_ik, V_jk), summed column by column over V's inverted index;
   J_ij = 1 - m_ij / (2 - m_ij), clipped at 0, in float32 as the reference does. With a bound
   (``keep``) only the pairs that can reach it are summed (:mod:`reidctl.cluster.jaccard_bounded`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from reidctl import search
from reidctl.cluster.jaccard_bounded import bounded_min_sum
from reidctl.cluster.threads import ordered_map
from reidctl.errors import ReidctlError

Progress = Callable[[int, int], None]

# Rows per block of the reciprocal/expansion pass: its dense scratch maps (block × N) hold about
# this many elements (a few MiB), so memory stays O(N·k²) overall.
_SCRATCH_ELEMENTS = 1 << 21
_MIN_SCRATCH_ROWS = 32
# Float64 accumulator of one min-sum block (rows × touched columns), sized for the CPU cache.
_ACCUMULATOR_ELEMENTS = 1 << 18
# Upper bound on (row, column, row) triples enumerated at once in the min-sum.
_TRIPLES_PER_BLOCK = 1 << 22


def jaccard_distance(
    feats: np.ndarray | torch.Tensor,
    k1: int = 30,
    k2: int = 6,
    *,
    variant: Literal["cc", "original"] = "cc",
    knn: tuple[np.ndarray, np.ndarray] | None = None,
    device: str = "auto",
    workers: int | None = None,
    progress: Progress | None = None,
    keep: float | None = None,
) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance of L2-normalised features as an N×N float32 CSR matrix.

    Stored entries are exactly those below 1 (all others are 1), or with ``keep`` only those
    ≤ ``keep`` (a DBSCAN with eps ≤ keep sees the same neighbourhoods; the full matrix of CNN
    features holds ≈ 2,000 entries a row, 16 GB at N = 1M); the diagonal is stored as 0,
    and off-diagonal zeros (identical neighbourhoods) are stored explicitly, so a consumer that
    treats missing entries as 1 (e.g. DBSCAN with eps < 1) sees the dense matrix.
    ``variant="cc"`` reproduces Cluster Contrast (kNN with k1 columns including the query),
    ``"original"`` Zhong et al.'s k1+1 columns. ``knn`` = ``(dist, idx)`` from
    :func:`reidctl.search.knn` (at least the needed number of columns) skips the search.
    ``workers``: CPU threads for the row blocks (default: torch's thread count).
    ``progress(done, total)`` reports rows processed (two passes over the rows).
    """
    x = torch.as_tensor(feats).float()
    search.check_normalised(x)
    n = x.shape[0]
    if variant not in ("cc", "original"):
        raise ReidctlError(f"unknown Jaccard variant {variant!r} (cc or original)")
    ncols = k1 if variant == "cc" else k1 + 1
    if k1 < 1 or k2 < 1:
        raise ReidctlError(f"k1 and k2 must be positive, got k1={k1}, k2={k2}")
    if ncols > n:
        raise ReidctlError(f"k1={k1} needs at least {ncols} samples, got {n}")
    if k2 > ncols:
        raise ReidctlError(f"k2={k2} must not exceed the {ncols} kNN columns (k1={k1})")
    if keep is not None and not 0 <= keep < 1:
        raise ReidctlError(f"keep={keep}: the Jaccard distances kept must be a bound in [0, 1)")
    if knn is None:
        knn = search.knn(x, ncols, device=device)
    dist, idx = (np.asarray(a) for a in knn)
    if idx.shape[0] != n or idx.shape[1] < ncols:
        raise ReidctlError(
            f"precomputed kNN has shape {idx.shape}; need {n} rows and ≥ {ncols} columns"
        )
    rank = np.ascontiguousarray(idx[:, :ncols], dtype=np.int64)
    rdist = np.ascontiguousarray(dist[:, :ncols], dtype=np.float32)

    def tick(done: int) -> None:
        if progress:
            progress(done, 2 * n)

    workers = workers or torch.get_num_threads()
    v = _expanded_weights(x.cpu().numpy(), rank, rdist, k1, tick, workers)
    if k2 != 1:
        v = _query_expansion(v, rank[:, :k2])
    if keep is not None:  # only the pairs whose bound reaches the threshold are summed
        return bounded_min_sum(v, keep, lambda d: tick(n + d), workers)
    return _min_sum_distance(v, lambda d: tick(n + d), workers)


def _reciprocal(rank: np.ndarray, k: int) -> np.ndarray:
    """Mask over rank[:, :k]: True where i is also among the first k entries of R[i, a]."""
    n = rank.shape[0]
    head = rank[:, :k]
    out = np.empty(head.shape, bool)
    step = max(1, _SCRATCH_ELEMENTS // (k * k))
    for s in range(0, n, step):
        e = min(n, s + step)
        back = head[head[s:e]]  # (b, k, k): the lists of i's neighbours
        out[s:e] = (back == np.arange(s, e)[:, None, None]).any(axis=2)
    return out


def _expanded_weights(
    x: np.ndarray, rank: np.ndarray, rdist: np.ndarray, k1: int, tick: Callable[[int], None],
    workers: int = 1,
) -> sp.csr_matrix:
    """V before query expansion: softmax weights over each expanded reciprocal set E_i."""
    n, ncols = rank.shape
    kf = min(k1 + 1, ncols)  # R[i, :k1+1] holds k1 entries in the cc variant
    kh = min(int(np.around(k1 / 2)) + 1, ncols)
    m_full = _reciprocal(rank, kf)
    m_half = _reciprocal(rank, kh)
    hlen = m_half.sum(axis=1)
    # at least _MIN_SCRATCH_ROWS rows: at N = 1M the element budget alone gives blocks of 2 rows,
    # whose per-block overhead dominated the pass; the maps are written sparsely (a few pages a row)
    b = max(1, min(n, max(_MIN_SCRATCH_ROWS, _SCRATCH_ELEMENTS // n)))
    local = threading.local()

    def block(s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not hasattr(local, "member"):  # per-thread scratch, reset after each use
            local.member = np.zeros((b, n), bool)  # member[r, j]: j ∈ S_i
            local.dmap = np.full((b, n), np.nan, np.float32)  # kNN distance of (i, j) if known
        member, dmap = local.member, local.dmap
        e = min(n, s + b)
        r = np.arange(e - s)[:, None]
        cand = rank[s:e, :kf]
        s_set = np.where(m_full[s:e], cand, -1)
        member[r, cand] = m_full[s:e]
        half = rank[cand, :kh]  # (b, kf, kh): half-size lists of each candidate
        in_half = m_half[cand]
        inter = (member[r[:, :, None], half] & in_half).sum(axis=2)
        member[r, cand] = False
        accept = m_full[s:e] & (inter > 2 / 3 * hlen[cand])
        grown = np.where(accept[:, :, None] & in_half, half, -1).reshape(e - s, -1)
        slots = np.concatenate([s_set, grown], axis=1)
        slots.sort(axis=1)
        keep = slots >= 0
        keep[:, 1:] &= slots[:, 1:] != slots[:, :-1]
        rr, cc = np.nonzero(keep)
        cols = slots[rr, cc]
        # distances: from the kNN lists where known, else a fresh dot product
        dmap[r, rank[s:e]] = rdist[s:e]
        d = dmap[rr, cols]
        dmap[r, rank[s:e]] = np.nan
        miss = np.isnan(d)
        if miss.any():  # few: numpy, not torch (thread start-up dominates tiny ops)
            d[miss] = 2 - 2 * np.einsum("ij,ij->i", x[rr[miss] + s], x[cols[miss]])
        return rr + s, cols, d

    parts = []
    for s, out in ordered_map(block, range(0, n, b), workers):
        parts.append(out)
        tick(min(n, s + b))
    rows, cols, d = (np.concatenate([p[c] for p in parts]) for c in range(3))
    # softmax(-d) per row, rows are contiguous runs
    counts = np.bincount(rows, minlength=n)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    dmin = _segment_reduce(np.minimum, d, indptr)
    w = np.exp(-(d - np.repeat(dmin, counts)))
    w /= np.repeat(_segment_reduce(np.add, w.astype(np.float64), indptr), counts).astype(np.float32)
    return sp.csr_matrix((w.astype(np.float32), cols.astype(np.int32), indptr), shape=(n, n))


def _segment_reduce(ufunc: np.ufunc, values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """``ufunc.reduceat`` over CSR-style segments; empty segments give 0."""
    out = np.zeros(len(indptr) - 1, values.dtype)
    full = np.flatnonzero(np.diff(indptr))
    if len(full):
        out[full] = ufunc.reduceat(values, indptr[full])
    return out


def _query_expansion(v0: sp.csr_matrix, first: np.ndarray) -> sp.csr_matrix:
    """V[i] = mean of V0 over i's first k2 neighbours (i included), in rank order."""
    n, k2 = first.shape
    q = sp.csr_matrix(
        (np.ones(n * k2, np.float32), first.reshape(-1).astype(np.int32),
         np.arange(0, n * k2 + 1, k2)),
        shape=(n, n),
    )
    v = (q @ v0).tocsr()
    v.data /= np.float32(k2)
    v.sort_indices()
    return v


def _min_sum_distance(
    v: sp.csr_matrix, tick: Callable[[int], None], workers: int = 1
) -> sp.csr_matrix:
    """J from V: m_ij = Σ_k min(V_ik, V_jk), accumulated one block of rows at a time.

    For each row block, every stored V_ik is paired with every stored V_jk of column k (the
    inverted index), which enumerates the Σ_k |col k|² terms of the min-sum once each; a
    cache-sized float64 accumulator (block rows × columns the block touches) adds them up.
    The terms of (i, j) and of (j, i) are added in the same order (ascending k), so J is
    exactly symmetric. Blocks are independent: ``workers`` threads share them (numpy releases
    the GIL inside its kernels).
    """
    n = v.shape[0]
    vt = v.T.tocsr()  # row k of vt = column k of v: (j, V_jk) sorted by j
    # float64 values: bincount accumulates in float64 anyway, this saves a conversion per block
    col = (vt.indptr, vt.indices, vt.data.astype(np.float64), np.diff(vt.indptr))
    row = (v.indptr, v.indices, v.data.astype(np.float64))
    # triples before each row, to size the blocks
    cum = np.concatenate([[0], np.cumsum(col[3][v.indices])])[v.indptr]
    bounds = _block_bounds(cum, n)
    # a task = several consecutive blocks (less thread hand-off per block)
    per_task = max(1, len(bounds) // max(64, 8 * workers))
    tasks = [bounds[t : t + per_task + 1] for t in range(0, len(bounds) - 1, per_task)]

    local = threading.local()

    def run(edges: list[int]) -> tuple[np.ndarray, ...]:
        if not hasattr(local, "mark"):  # per-thread scratch over the columns
            local.mark, local.slot = np.zeros(n, bool), np.zeros(n, np.int64)
        parts = [_min_sum_block(row, col, s, e, local.mark, local.slot)
                 for s, e in zip(edges[:-1], edges[1:])]
        return tuple(np.concatenate([p[c] for p in parts]) for c in range(3))

    # Output arrays sized by an upper bound (every triple a new entry, plus diagonals): the
    # pages beyond the final size are never touched, so they cost no memory, and resize()
    # gives them back in place. Writing blocks straight into them keeps the peak at one J.
    cap = min(int(cum[-1]) + n, n * n)
    indices = np.empty(cap, np.int32)
    data = np.empty(cap, np.float32)
    counts = np.empty(n, np.int64)
    at = 0
    for edges, (cnt, cols, vals) in ordered_map(run, tasks, workers):
        counts[edges[0] : edges[-1]] = cnt
        indices[at : at + len(cols)] = cols
        data[at : at + len(cols)] = vals
        at += len(cols)
        tick(edges[-1])
    indices.resize(at, refcheck=False)
    data.resize(at, refcheck=False)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    if at < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    # built from explicit arrays: explicit zeros are kept (never call eliminate_zeros on it)
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))


def _block_bounds(cum: np.ndarray, n: int) -> list[int]:
    """Row blocks whose accumulator (rows × touched columns ≤ rows × min(N, triples + rows))
    stays near _ACCUMULATOR_ELEMENTS and whose triples stay under _TRIPLES_PER_BLOCK."""
    bounds = [0]
    while bounds[-1] < n:
        s = lo = bounds[-1]
        hi = n
        while lo < hi:  # largest e whose block fits (at least one row)
            e = (lo + hi + 1) // 2
            t = int(cum[e] - cum[s])
            fits = (e - s) * min(n, t + e - s) <= _ACCUMULATOR_ELEMENTS and t <= _TRIPLES_PER_BLOCK
            lo, hi = (e, hi) if fits else (lo, e - 1)
        bounds.append(max(lo, s + 1))
    return bounds


def _min_sum_block(
    row: tuple[np.ndarray, ...], col: tuple[np.ndarray, ...], s: int, e: int,
    mark: np.ndarray, slot: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows s..e of J: (entries per row, column indices, float32 values).

    The accumulator spans only the columns this block touches (found with ``mark``, a zeroed
    bool vector over all columns, and numbered through ``slot``), in ascending order, so its
    size follows the output, not N, and the entries come out sorted.
    """
    row_ptr, row_cols, row_vals = row
    col_ptr, col_rows, col_vals, col_len = col
    lo, hi = row_ptr[s], row_ptr[e]
    ks = row_cols[lo:hi]
    lens = col_len[ks]
    total = int(lens.sum())
    # ragged gather: positions col_ptr[k] .. col_ptr[k+1] for every stored (i, k)
    first = np.cumsum(lens) - lens
    pos = np.repeat(col_ptr[ks] - first, lens) + np.arange(total)
    vals = np.minimum(np.repeat(row_vals[lo:hi], lens), col_vals[pos])
    j_of = col_rows[pos]
    mark[j_of] = True
    mark[s:e] = True  # the diagonal is always stored
    used = np.flatnonzero(mark)
    mark[used] = False
    width = len(used)
    slot[used] = np.arange(width)
    row_base = np.repeat(np.arange(0, (e - s) * width, width), np.diff(row_ptr[s : e + 1]))
    flat = np.repeat(row_base, lens) + slot[j_of]
    m = np.bincount(flat, weights=vals, minlength=(e - s) * width)
    diag = np.arange(e - s) * width + slot[s:e]
    m[diag[m[diag] == 0]] = 1  # a row with an empty V keeps its diagonal (set to 0 below)
    nz = np.flatnonzero(m != 0)
    mm = m[nz].astype(np.float32)
    j = np.float32(1) - mm / (np.float32(2) - mm)
    np.maximum(j, 0, out=j)
    rr, cc = np.divmod(nz, width)
    cc = used[cc]
    j[rr + s == cc] = 0
    keep = j < 1  # m > 0 bounds J below 1 in theory; guard the float32 rounding anyway
    if not keep.all():
        rr, cc, j = rr[keep], cc[keep], j[keep]
    return np.bincount(rr, minlength=e - s), cc.astype(np.int32), j
