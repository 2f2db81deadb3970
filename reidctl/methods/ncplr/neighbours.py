"""NCPLR's neighbour sets and its in-batch neighbour-ensemble predictions (ALGORITHMS.md §7.3–7.4).

The official code keeps a dense N×N boolean matrix of ``D(i,j) ≤ eps_neighbor`` next to the
dense distances (about 1 GB at MSMT17 scale). Here the sets are the entries of the sparse
clustering distance that pass the threshold, kept as a CSR matrix whose stored entries *are*
the neighbour pairs and whose values are their distances; explicit zeros (the diagonal,
identical neighbourhoods) are neighbours at distance 0. Nothing here is ever N×N dense.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from reidctl.errors import ReidctlError

#: How the members of an in-batch neighbour set are weighted: ``official`` = softmax of
#: +D/T_n (the official code: farther is heavier), ``paper`` = softmax of −D/T_n (closer is
#: heavier), ``mean`` = the plain mean (the official ``ce-option 0``).
NEIGHBOR_WEIGHTS = ("official", "paper", "mean")


def _row_entries(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``indices``/``data`` of the stored entries of ``rows`` (in the given order,
    repeats allowed), and for each the position of its row in ``rows``."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    owner = np.repeat(np.arange(len(rows)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offsets, owner


def _owners(m: sp.csr_matrix) -> np.ndarray:
    """The row of every stored entry of a CSR matrix."""
    return np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))


def _csr(values: np.ndarray, cols: np.ndarray, owner: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A CSR matrix from entries already grouped by row (``owner`` non-decreasing), explicit
    zeros kept (scipy's constructors from COO would sum duplicates, its arithmetic drops zeros)."""
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=shape[0]), out=indptr[1:])
    return sp.csr_matrix((values.astype(np.float32), cols.astype(np.int32), indptr), shape=shape)


def neighbour_sets(distance: sp.spmatrix | sp.sparray, labels: np.ndarray, eps: float) -> sp.csr_matrix:
    """``{j : D(i,j) ≤ eps}`` for every clustered row i, over clustered rows j (labels ≥ 0).

    ``distance`` is the clustering's sparse distance (unstored entries are 1.0; the sparse
    Jaccard convention of :mod:`reidctl.cluster.mixing`), so ``eps`` must lie below 1. Returns
    an N×N float32 CSR matrix storing exactly the neighbour pairs with their distances (rows
    and columns of outliers empty). Sets are not restricted to i's cluster, and i ∈ Nbr(i).
    """
    if not 0 <= eps < 1:
        raise ReidctlError(f"--eps-neighbor {eps}: must lie in [0, 1) (the distance is 1 outside the kNN lists)")
    d = sp.csr_matrix(distance)
    labels = np.asarray(labels)
    n = len(labels)
    if d.shape != (n, n):
        raise ReidctlError(f"the clustering distance is {d.shape[0]}×{d.shape[1]} but there are {n} labels")
    owner = _owners(d)
    clustered = labels >= 0
    keep = (d.data <= eps) & clustered[owner] & clustered[d.indices]
    return _csr(d.data[keep], d.indices[keep], owner[keep], (n, n))


def summary(sets: sp.csr_matrix, labels: np.ndarray) -> dict[str, float | int]:
    """What the refine stage reports: stored pairs (self-pairs included), the mean set size of
    the clustered rows, and the share of pairs inside one cluster."""
    labels = np.asarray(labels)
    sizes = np.diff(sets.indptr)[labels >= 0]
    same = labels[_owners(sets)] == labels[sets.indices]
    return {"neighbour_pairs": int(sets.nnz),
            "neighbours_mean": round(float(sizes.mean()), 3) if len(sizes) else 0.0,
            "neighbours_same_cluster": round(float(same.mean()), 4) if sets.nnz else 0.0}


def epoch_neighbours(neighbours: sp.spmatrix | sp.sparray, rows: np.ndarray) -> sp.csr_matrix:
    """The sets re-indexed on both axes to the epoch's samples: ``rows[p]`` is the train-split
    row of epoch position p (the clustered rows, sorted). Pairs leaving ``rows`` are dropped."""
    m = sp.csr_matrix(neighbours)
    rows = np.asarray(rows, dtype=np.int64)
    position = np.full(m.shape[1], -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    flat, owner = _row_entries(m.indptr, rows)
    cols = position[m.indices[flat]]
    keep = cols >= 0
    return _csr(m.data[flat][keep], cols[keep], owner[keep], (len(rows), len(rows)))


def batch_pairs(neighbours: sp.csr_matrix, index: np.ndarray, rows: slice) -> tuple[np.ndarray, ...]:
    """The in-batch neighbour pairs of the batch rows ``rows``: for each row r, the batch
    positions b whose sample is a neighbour of sample ``index[r]``, with their distance.

    ``index`` (B) are the epoch positions of the whole (global) batch. A sample that occurs more
    than once in the batch counts once, at its first occurrence, as in the official code.
    Returns ``(r, b, d)``: r relative to ``rows.start``, b in ``0..B-1``.
    """
    index = np.asarray(index, dtype=np.int64)
    unique, first = np.unique(index, return_index=True)
    at = np.full(neighbours.shape[0], -1, dtype=np.int64)
    at[unique] = first
    flat, owner = _row_entries(neighbours.indptr, index[rows])
    b = at[neighbours.indices[flat]]
    keep = b >= 0
    return owner[keep], b[keep], neighbours.data[flat][keep]


def neighbour_weights(r: torch.Tensor, d: torch.Tensor, rows: int, weight: str = "official",
                      temperature: float = 1.0) -> torch.Tensor:
    """ω of each pair: a softmax within each row's set of ``+d/T`` (official), ``−d/T`` (paper)
    or of 0 (mean)."""
    if weight not in NEIGHBOR_WEIGHTS:
        raise ReidctlError(f"--neighbor-weight {weight}: choose one of {', '.join(NEIGHBOR_WEIGHTS)}")
    sign = {"official": 1.0, "paper": -1.0, "mean": 0.0}[weight]
    score = sign * d.double() / temperature
    top = torch.full((rows,), -torch.inf, dtype=score.dtype, device=score.device)
    top = top.scatter_reduce(0, r, score, "amax")
    e = torch.exp(score - top[r])
    total = torch.zeros(rows, dtype=e.dtype, device=e.device).index_add_(0, r, e)
    return (e / total[r]).float()


def ensemble(probs: torch.Tensor, r: torch.Tensor, b: torch.Tensor, w: torch.Tensor, rows: int) -> torch.Tensor:
    """``e_r = Σ_pairs ω · probs[b]``: the neighbour-ensemble prediction of each of ``rows`` rows."""
    out = torch.zeros(rows, probs.shape[1], dtype=probs.dtype, device=probs.device)
    return out.index_add_(0, r, w[:, None].to(probs.dtype) * probs[b])
