"""Retrieval metrics (mAP, CMC, mINP) and k-reciprocal re-ranking for query/gallery splits.

Why this module exists rather than the research codes' evaluators:

* The Cluster Contrast family (CC, PPLR, NCPLR, ICSR) sorts the full Q×G distance matrix and then
  calls ``sklearn.metrics.average_precision_score`` once per query. At MSMT17 scale
  (11,659 × 82,161) that is ~12 GB of distances and argsort indices and minutes of Python loops.
  Here every metric is computed for a block of query rows at a time, vectorised in NumPy, so
  memory is bounded by the block and the same numbers come out (see ``ALGORITHMS.md`` §2).
* Papers in this area report two different APs: the CC family's scikit-learn AP and MAR's
  trapezoidal AP. Both are offered (``ap=``) so a number can always be labelled with its
  convention.

Conventions (all shared by every ``ap=`` choice):

* **Pairs.** ``pairs="market"`` is the Market-1501 protocol used by torchreid and the CC family:
  a gallery item with the query's identity *and* camera is ignored (neither a hit nor a miss).
  ``pairs="cross-camera"`` keeps only gallery items from other cameras (hits *and* misses), and
  ``pairs="same-camera"`` keeps only gallery items from the query's own camera; both need known
  camera ids. Queries with no valid correct match are skipped and not counted.
* **Unknown labels.** A negative pid is "unknown": it never matches anything, so a query with an
  unknown pid is skipped. A negative camera id is "unknown": under ``"market"`` it never counts
  as the query's camera.
* **Ties.** The scikit-learn AP groups tied distances (precision is evaluated only at distinct
  distance thresholds), so it does not depend on how ties are ordered. CMC, mINP and the
  rank-based APs do; they use a *stable* order (ties broken by gallery index, i.e.
  ``np.argsort(kind="stable")``). The research codes use NumPy's default (unstable, SIMD,
  CPU-dependent) sort, so with tied distances their CMC can differ from ours by a query moving
  inside a tie group; with real-valued features ties essentially never happen.
* **Distances.** Smaller is more similar. Squared Euclidean distances as the CC family computes
  them come from :func:`pairwise_distance`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np
import torch
from scipy import sparse

from reidctl.errors import ReidctlError

__all__ = [
    "AP_KINDS",
    "DEFAULT_RERANK_MAX_BYTES",
    "count_valid_queries",
    "PAIRS",
    "evaluate_features",
    "evaluate_ranking",
    "pairwise_distance",
    "re_ranking",
    "rerank_memory_bytes",
]

#: ``ap=`` choices. ``sklearn``: non-interpolated AP with tied distances grouped, exactly as
#: ``sklearn.metrics.average_precision_score`` (CC, PPLR, NCPLR, ICSR). ``ranked``: mean of the
#: precision at each correct hit in the (stable) ranking (torchreid, fast-reid). ``trapezoid``:
#: MAR's ``eval_cmc_map`` (trapezoid rule; the precision before the first hit is taken as 1).
#: ``matlab``: the official Market-1501 MATLAB ``compute_AP`` (trapezoid rule, but the precision
#: before the first hit is 0 unless that hit is at rank 1); differs from ``trapezoid`` only for
#: queries whose first correct match is not at rank 1.
AP_KINDS = ("sklearn", "ranked", "trapezoid", "matlab")
#: ``pairs=`` choices, see the module docstring.
PAIRS = ("market", "cross-camera", "same-camera")

#: Features: an N × D array or tensor (converted to float32 torch for the distance).
Features = Union[np.ndarray, torch.Tensor]

#: Elements of a query-block × gallery slab processed at once (bounds the temporaries).
_BLOCK_ELEMS = 1 << 23
#: Default memory ceiling for re-ranking (it needs dense (Q+G)² matrices).
DEFAULT_RERANK_MAX_BYTES = 8 * 1024**3
_NON_FINITE = "the distance matrix contains NaN or infinite values (are the features finite?)"


# ----------------------------------------------------------------------------------------------
# ranking metrics
# ----------------------------------------------------------------------------------------------


class _Accumulator:
    """Running sums over query blocks, so the full Q×G matrix never has to exist at once."""

    def __init__(self, max_rank: int, also: Sequence[str] = (), num_queries: int | None = None) -> None:
        self.max_rank = max_rank
        # Each query's AP (NaN: skipped, no valid correct match), kept when num_queries is given.
        self.per_query = None if num_queries is None else np.full(num_queries, np.nan)
        self.ap_sum = 0.0
        self.also = {kind: 0.0 for kind in also}  # AP sums of other conventions, for mAP_<kind>
        self.inp_sum = 0.0
        self.cmc_counts = np.zeros(max_rank, dtype=np.int64)
        self.num_valid = 0

    def result(self) -> dict[str, Any]:
        n = self.num_valid
        extra = {} if self.per_query is None else {"ap_per_query": self.per_query}
        if n == 0:
            nan = float("nan")
            return {"mAP": nan, "cmc": np.full(self.max_rank, nan), "mINP": nan, "num_valid_queries": 0,
                    **{f"mAP_{kind}": nan for kind in self.also}, **extra}
        return {
            **extra,
            "mAP": self.ap_sum / n,
            "cmc": np.cumsum(self.cmc_counts) / n,
            "mINP": self.inp_sum / n,
            "num_valid_queries": int(n),
            **{f"mAP_{kind}": total / n for kind, total in self.also.items()},
        }


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


def _labels(values, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values).reshape(-1)
    if arr.shape[0] != n:
        raise ReidctlError(f"{what} has {arr.shape[0]} entries but there are {n} rows to label")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ReidctlError(f"{what} must be integers")
        arr = arr.astype(np.int64)
    return arr


def _check_cameras(pairs: str, q_camids: np.ndarray, g_camids: np.ndarray) -> None:
    if pairs != "market" and (np.any(q_camids < 0) or np.any(g_camids < 0)):
        raise ReidctlError(
            f"pairs='{pairs}' needs camera ids, but some are unknown (-1); use pairs='market'"
        )


def protocol_masks(
    q_pids: np.ndarray, q_cams: np.ndarray, g_pids: np.ndarray, g_cams: np.ndarray, pairs: str
) -> tuple[np.ndarray, np.ndarray]:
    """(valid, match) for a query block: which gallery items count under ``pairs`` (the others
    are ignored, neither hits nor misses), and which are correct."""
    same_cam = q_cams[:, None] == g_cams[None, :]
    same_pid = (q_pids[:, None] == g_pids[None, :]) & (q_pids >= 0)[:, None]
    if pairs == "market":
        valid = ~(same_pid & same_cam & (g_cams >= 0)[None, :])
    elif pairs == "cross-camera":
        valid = ~same_cam
    else:  # same-camera
        valid = same_cam
    return valid, same_pid & valid


def count_valid_queries(q_pids, q_camids, g_pids, g_camids, pairs: str = "market") -> int:
    """How many queries have at least one correct match under ``pairs`` (the rule of
    :func:`protocol_masks`), from identities and cameras alone: no distances, O(Q + G). A split with
    none (one camera under the Market protocol) cannot be evaluated."""
    from collections import Counter  # noqa: PLC0415

    q_pids, q_camids = np.asarray(q_pids).reshape(-1), np.asarray(q_camids).reshape(-1)
    g_pids, g_camids = np.asarray(g_pids).reshape(-1), np.asarray(g_camids).reshape(-1)
    per_pid = Counter(g_pids.tolist())
    per_pid_cam = Counter(zip(g_pids.tolist(), g_camids.tolist()))
    valid = 0
    for pid, cam in zip(q_pids.tolist(), q_camids.tolist()):
        if pid < 0:
            continue
        same = per_pid_cam[(pid, cam)]
        if pairs == "market":
            matches = per_pid[pid] - (same if cam >= 0 else 0)
        elif pairs == "cross-camera":
            matches = per_pid[pid] - same
        else:
            matches = same
        valid += matches > 0
    return int(valid)


def _evaluate_block(
    dist: np.ndarray,
    q_pids: np.ndarray,
    q_cams: np.ndarray,
    g_pids: np.ndarray,
    g_cams: np.ndarray,
    pairs: str,
    ap: str,
    acc: _Accumulator,
    first_row: int = 0,
) -> None:
    """Add one block of query rows (rows ``first_row``... of the whole query set) to ``acc``.

    No Q×G argsort: for every correct match p of a query, everything follows from two counts over
    the valid gallery items, ``n_lt`` (distance < d_p) and ``n_le`` (distance <= d_p), read off a
    value-sorted copy of the row, plus — only for matches tied with another valid item — the
    number of tied valid items with a smaller gallery index (the stable-sort tie break).
    """
    if not np.all(np.isfinite(dist)):
        raise ReidctlError(_NON_FINITE)
    valid, match = protocol_masks(q_pids, q_cams, g_pids, g_cams, pairs)
    n_pos = match.sum(axis=1)
    keep = n_pos > 0
    if not keep.any():
        return
    kept_rows = first_row + np.flatnonzero(keep)
    if not keep.all():
        dist, valid, match, n_pos = dist[keep], valid[keep], match[keep], n_pos[keep]
    num_rows, num_g = dist.shape

    rows, cols = np.nonzero(match)  # row-major: grouped by row, ascending gallery index
    d = dist[rows, cols]
    starts = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(n_pos, out=starts[1:])

    # Valid distances sorted per row (invalid ones pushed to +inf, never counted: d is finite).
    srt = np.where(valid, dist, np.inf)
    srt.sort(axis=1)
    n_lt = np.empty(len(d), dtype=np.int64)
    n_le = np.empty(len(d), dtype=np.int64)
    for b in range(num_rows):
        sl = slice(starts[b], starts[b + 1])
        n_lt[sl] = np.searchsorted(srt[b], d[sl], side="left")
        n_le[sl] = np.searchsorted(srt[b], d[sl], side="right")
    del srt

    # 0-based rank of each correct match among the valid items, ties broken by gallery index.
    rank = n_lt.copy()
    tied = np.flatnonzero(n_le - n_lt > 1)
    if tied.size:
        step = max(1, _BLOCK_ELEMS // num_g)
        arange_g = np.arange(num_g)
        for s in range(0, tied.size, step):
            t = tied[s : s + step]
            before = (
                valid[rows[t]]
                & (dist[rows[t]] == d[t][:, None])
                & (arange_g[None, :] < cols[t][:, None])
            )
            rank[t] += before.sum(axis=1)

    # Matches of each row in rank order; j = 0-based index among the row's correct matches.
    order = np.lexsort((rank, rows))
    r_sorted, s_sorted = rows[order], rank[order]
    j = np.arange(len(order)) - starts[r_sorted]
    first = s_sorted[starts[:-1]]
    last = s_sorted[starts[1:] - 1]

    for kind in (ap, *acc.also):
        ap_rows = _ap_rows(kind, rows, d, starts, n_le, j, s_sorted, r_sorted, n_pos)
        if kind == ap:
            acc.ap_sum += float(ap_rows.sum())
            if acc.per_query is not None:
                acc.per_query[kept_rows] = ap_rows
        else:
            acc.also[kind] += float(ap_rows.sum())
    acc.inp_sum += float((n_pos / (last + 1)).sum())
    hit = first < acc.max_rank
    acc.cmc_counts += np.bincount(first[hit], minlength=acc.max_rank)[: acc.max_rank]
    acc.num_valid += num_rows


def _ap_rows(ap: str, rows: np.ndarray, d: np.ndarray, starts: np.ndarray, n_le: np.ndarray, j: np.ndarray,
             s_sorted: np.ndarray, r_sorted: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    """Each query row's AP under convention ``ap`` (:data:`AP_KINDS`), from its correct matches'
    distances ``d`` and ranks (see :func:`_evaluate_block`)."""
    num_rows = len(n_pos)
    if ap == "sklearn":
        # Precision at a match = TP(<= d_p) / N(<= d_p): ties grouped like scikit-learn's
        # thresholds. TP(<= d_p) = position of the end of p's tie group among the row's matches.
        o = np.lexsort((d, rows))
        ro, do = rows[o], d[o]
        group_last = np.ones(len(o), dtype=bool)
        group_last[:-1] = (ro[1:] != ro[:-1]) | (do[1:] != do[:-1])
        idx = np.where(group_last, np.arange(len(o)), len(o))
        group_end = np.minimum.accumulate(idx[::-1])[::-1]
        tp_le = group_end - starts[ro] + 1
        terms = tp_le / n_le[o]
        ap_rows = np.bincount(ro, weights=terms, minlength=num_rows) / n_pos
    else:
        prec = (j + 1) / (s_sorted + 1)
        if ap == "ranked":
            terms = prec
        else:
            if ap == "trapezoid":
                prev = np.where(j > 0, j / np.maximum(s_sorted, 1), 1.0)
            else:  # matlab
                prev = np.where(s_sorted > 0, j / np.maximum(s_sorted, 1), 1.0)
            terms = (prev + prec) / 2.0
        ap_rows = np.bincount(r_sorted, weights=terms, minlength=num_rows) / n_pos
    return ap_rows


def evaluate_ranking(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    ap: str = "sklearn",
    max_rank: int = 50,
    pairs: str = "market",
    also: Sequence[str] = (),
    per_query: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """mAP, CMC and mINP of a query×gallery distance matrix (smaller = more similar).

    Returns ``{"mAP": float, "cmc": array (cmc[k-1] = rank-k accuracy, length
    min(max_rank, G)), "mINP": float, "num_valid_queries": int}``; metrics are NaN when no query
    has a valid correct match. ``ap`` is one of :data:`AP_KINDS`, ``pairs`` one of
    :data:`PAIRS` (see the module docstring). Rows are processed in blocks, so a memory-mapped
    ``distmat`` is never loaded whole. ``also``: further AP conventions, computed in the same
    pass and returned as ``mAP_<kind>``. ``per_query``: also return ``ap_per_query``, each
    query's AP (NaN for a skipped query). ``progress(done, num_queries)`` is called after each block.
    """
    for kind in also:
        _check_choice("ap", kind, AP_KINDS)
    _check_choice("ap", ap, AP_KINDS)
    _check_choice("pairs", pairs, PAIRS)
    if max_rank < 1:
        raise ValueError("max_rank must be >= 1")
    if getattr(distmat, "ndim", None) != 2:
        distmat = np.asarray(distmat)
        if distmat.ndim != 2:
            raise ReidctlError(f"the distance matrix must be 2-D, got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    q_pids = _labels(q_pids, num_q, "q_pids")
    q_camids = _labels(q_camids, num_q, "q_camids")
    g_pids = _labels(g_pids, num_g, "g_pids")
    g_camids = _labels(g_camids, num_g, "g_camids")
    _check_cameras(pairs, q_camids, g_camids)

    acc = _Accumulator(min(max_rank, num_g) if num_g else max_rank, also, num_q if per_query else None)
    step = max(1, _BLOCK_ELEMS // max(num_g, 1))
    for s in range(0, num_q, step):
        block = np.asarray(distmat[s : s + step])
        rows = slice(s, s + step)
        _evaluate_block(block, q_pids[rows], q_camids[rows], g_pids, g_camids, pairs, ap, acc, s)
        if progress is not None:
            progress(min(s + step, num_q), num_q)
    return acc.result()


# ----------------------------------------------------------------------------------------------
# distances
# ----------------------------------------------------------------------------------------------


def _as_features(x: Features, device: torch.device, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise ReidctlError(f"{what} must be a 2-D (N × D) array, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float32)


def _resolve_device(device, *tensors) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in tensors:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def _distance_blocks(
    qf: Features, gf: Features, chunk: int, device: str | torch.device | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, block)`` of squared Euclidean query×gallery distances, float32."""
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    dev = _resolve_device(device, qf, gf)
    with torch.no_grad():
        g = _as_features(gf, dev, "gallery features")
        gg = g.pow(2).sum(dim=1)
        for s in range(0, len(qf), chunk):
            q = _as_features(qf[s : s + chunk], dev, "query features")
            if q.shape[1] != g.shape[1]:
                raise ReidctlError(
                    f"query features have {q.shape[1]} dimensions but gallery features {g.shape[1]}"
                )
            # The CC family's formula: ‖q‖² + ‖g‖² − 2 q·g, one addmm (not clamped at 0).
            sq = q.pow(2).sum(dim=1, keepdim=True) + gg[None, :]
            block = torch.addmm(sq, q, g.T, beta=1, alpha=-2)
            yield s, block.cpu().numpy()


def pairwise_distance(
    qf: Features, gf: Features, chunk: int = 4096, device: str | torch.device | None = None
) -> np.ndarray:
    """Squared Euclidean distances ``‖q‖² + ‖g‖² − 2 q·g`` (float32, Q×G) as the CC family has them.

    Computed ``chunk`` query rows at a time with torch (on ``device``, default: the device of a
    tensor input, else CPU) so the temporaries stay small. For L2-normalised features this is
    ``2 − 2 cos``. Not clamped at 0, like the original: identical features may give −1e-7.
    """
    q_len = len(qf)
    out = np.empty((q_len, len(gf)), dtype=np.float32)
    for s, block in _distance_blocks(qf, gf, chunk, device):
        out[s : s + block.shape[0]] = block
    return out


# ----------------------------------------------------------------------------------------------
# k-reciprocal re-ranking (Zhong et al., CVPR 2017)
# ----------------------------------------------------------------------------------------------


def rerank_memory_bytes(num_query: int, num_gallery: int, k1: int = 20) -> int:
    """Rough peak memory of :func:`re_ranking` (it needs a dense (Q+G)² float32 matrix)."""
    n = num_query + num_gallery
    return int(4 * n * n + 12 * num_query * num_gallery + 400 * n * (k1 + 1) + 2**28)


def _check_rerank_memory(num_query: int, num_gallery: int, k1: int, max_bytes: int) -> None:
    need = rerank_memory_bytes(num_query, num_gallery, k1)
    if need > max_bytes:
        raise ReidctlError(
            f"re-ranking {num_query} queries × {num_gallery} gallery items needs about "
            f"{need / 1024**3:.1f} GB (dense ({num_query}+{num_gallery})² matrices), over the limit of "
            f"{max_bytes / 1024**3:.1f} GB; evaluate without re-ranking or raise the limit"
        )


def _smallest_k(mat: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest entries of each row, ascending, ties broken by column index.

    Equals ``np.argsort(mat, axis=1, kind="stable")[:, :k]`` without sorting whole rows.
    """
    n_rows, n_cols = mat.shape
    out = np.empty((n_rows, k), dtype=np.int64)
    step = max(1, _BLOCK_ELEMS // max(n_cols, 1))
    for s in range(0, n_rows, step):
        blk = mat[s : s + step]
        b = blk.shape[0]
        if k < n_cols:
            kth = np.partition(blk, k - 1, axis=1)[:, k - 1]
            r, c = np.nonzero(blk <= kth[:, None])  # >= k per row; more only with ties at kth
        else:
            r, c = np.divmod(np.arange(b * n_cols), n_cols)
        o = np.lexsort((c, blk[r, c], r))
        r, c = r[o], c[o]
        counts = np.bincount(r, minlength=b)
        first = np.zeros(b + 1, dtype=np.int64)
        np.cumsum(counts, out=first[1:])
        pos = np.arange(len(r)) - first[r]
        sel = pos < k
        out[s + r[sel], pos[sel]] = c[sel]
    return out


def _reciprocal(nbrs: np.ndarray) -> np.ndarray:
    """mask[i, a]: is i among the neighbours of its a-th neighbour (both lists of equal length)?"""
    n, k = nbrs.shape
    mask = np.empty((n, k), dtype=bool)
    step = max(1, _BLOCK_ELEMS // (k * k))
    for s in range(0, n, step):
        back = nbrs[nbrs[s : s + step]]  # b × k × k
        mask[s : s + step] = (back == np.arange(s, s + back.shape[0])[:, None, None]).any(axis=2)
    return mask


def _rerank_core(dist: np.ndarray, num_query: int, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """Re-rank from the (Q+G)² matrix laid out as the CC code's transposed original distance.

    ``dist`` is overwritten (it becomes the normalised original distance). Returns Q×G float32.
    """
    n = dist.shape[0]
    num_g = n - num_query
    # As the CC family's rerank.py: square the given distances and scale each row by its max.
    step = max(1, _BLOCK_ELEMS // n)
    for s in range(0, n, step):
        blk = dist[s : s + step]
        np.square(blk, out=blk)
        mx = blk.max(axis=1, keepdims=True)
        mx[mx == 0] = 1.0
        blk /= mx

    k_main = min(k1 + 1, n)  # the forward list includes the point itself
    k_half = min(int(np.around(k1 / 2.0)) + 1, n)
    k_qe = min(max(k2, 1), n)
    nbrs = _smallest_k(dist, max(k_main, k_half, k_qe))

    # k-reciprocal sets R(i, k1) and the half-size sets R(c, k1/2) of every point.
    main = nbrs[:, :k_main]
    main_mask = _reciprocal(main)
    half = nbrs[:, :k_half]
    half_pad = np.where(_reciprocal(half), half, -1)
    half_size = (half_pad >= 0).sum(axis=1)
    main_pad = np.where(main_mask, main, -1)

    # Expansion: add R(c, k1/2) of a member c of R(i, k1) when more than 2/3 of it lies in R(i, k1).
    keys = []
    step = max(1, _BLOCK_ELEMS // (k_main * k_half * k_main))
    for s in range(0, n, step):
        sp = main_pad[s : s + step]  # b × k_main, -1 = not in the set
        b = sp.shape[0]
        cand = np.where(sp >= 0, sp, 0)
        hc = half_pad[cand]  # b × k_main × k_half
        inside = ((hc[:, :, :, None] == sp[:, None, None, :]) & (hc >= 0)[:, :, :, None]).any(axis=3)
        accept = (sp >= 0) & (inside.sum(axis=2) > 2.0 / 3 * half_size[cand])
        row_ids = np.arange(s, s + b, dtype=np.int64)
        keys.append(row_ids[:, None].repeat(k_main, 1)[sp >= 0] * n + sp[sp >= 0])
        extra = np.where(accept[:, :, None] & (hc >= 0), hc, -1)
        ri = np.broadcast_to(row_ids[:, None, None], extra.shape)
        keys.append(ri[extra >= 0] * n + extra[extra >= 0])
    key = np.unique(np.concatenate(keys))
    v_rows, v_cols = np.divmod(key, n)

    # Gaussian-kernel weights exp(-d) over each expanded set, normalised to sum 1.
    w = np.exp(-dist[v_rows, v_cols].astype(np.float64))
    w /= np.bincount(v_rows, weights=w, minlength=n)[v_rows]
    v = sparse.csr_matrix((w, (v_rows, v_cols)), shape=(n, n))

    # Local query expansion: average V over each point's k2 nearest neighbours (itself included).
    if k2 != 1:
        qe_rows = np.repeat(np.arange(n), k_qe)
        qe = sparse.csr_matrix(
            (np.full(n * k_qe, 1.0 / k_qe), (qe_rows, nbrs[:, :k_qe].reshape(-1))), shape=(n, n)
        )
        v = (qe @ v).tocsr()
    v.sort_indices()

    # Jaccard distance query × gallery: m_ij = Σ_k min(V_ik, V_jk); J = 1 − m / (2 − m).
    vq = v[:num_query]
    vg = v[num_query:].tocsc()
    vg.sort_indices()
    col_nnz = np.diff(vg.indptr)
    nnz_row = np.repeat(np.arange(num_query), np.diff(vq.indptr))
    per_query = np.bincount(nnz_row, weights=col_nnz[vq.indices], minlength=num_query)
    jaccard = np.empty((num_query, num_g), dtype=np.float32)
    budget = max(_BLOCK_ELEMS, 1)
    s = 0
    while s < num_query:
        # Queries s..e-1 together expand to at most ~budget (query, gallery) contributions.
        cum = np.cumsum(per_query[s:])
        e = s + max(1, int(np.searchsorted(cum, budget, side="right")))
        e = min(e, s + max(1, _BLOCK_ELEMS // max(num_g, 1)))
        lo, hi = vq.indptr[s], vq.indptr[e]
        q_local = np.repeat(np.arange(e - s), np.diff(vq.indptr[s : e + 1]))
        ks, vals = vq.indices[lo:hi], vq.data[lo:hi]
        counts = col_nnz[ks]
        offsets = np.repeat(vg.indptr[ks] - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
        pos = np.arange(int(counts.sum())) + offsets
        mins = np.minimum(np.repeat(vals, counts), vg.data[pos])
        target = np.repeat(q_local, counts) * num_g + vg.indices[pos]
        m = np.bincount(target, weights=mins, minlength=(e - s) * num_g).reshape(e - s, num_g)
        jaccard[s:e] = 1.0 - m / (2.0 - m)
        s = e

    final = jaccard
    final *= 1.0 - lambda_value
    final += lambda_value * dist[:num_query, num_query:]
    return final


def re_ranking(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    max_bytes: int = DEFAULT_RERANK_MAX_BYTES,
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) as the CC family runs it at test time.

    Steps, over all Q+G images together: the original distance is the given distance *squared*
    and divided by its row maximum (the CC family passes squared Euclidean distances in, so this
    is d⁴ scaled — a quirk kept for parity); k-reciprocal sets R(i, k1) (forward lists of k1+1
    including the point itself); each set expanded by R(c, round(k1/2)) of a member c when more
    than 2/3 of that set is already in R(i, k1); weights exp(−d) normalised over the set; local
    query expansion (mean over the k2 nearest neighbours, itself included, when k2 ≠ 1);
    Jaccard distance J = 1 − Σmin/(2 − Σmin); result ``(1 − λ)·J + λ·original``, Q×G float32.
    Neighbour ties are broken by index. Needs dense (Q+G)² memory: raises
    :class:`~reidctl.errors.ReidctlError` above ``max_bytes``.
    """
    q_g = np.asarray(q_g_dist)
    q_q = np.asarray(q_q_dist)
    g_g = np.asarray(g_g_dist)
    num_q, num_g = q_g.shape
    if q_q.shape != (num_q, num_q) or g_g.shape != (num_g, num_g):
        raise ReidctlError(
            f"re_ranking: shapes do not line up: q_g {q_g.shape}, q_q {q_q.shape}, g_g {g_g.shape}"
        )
    if k1 < 1 or k2 < 1:
        raise ValueError("k1 and k2 must be >= 1")
    _check_rerank_memory(num_q, num_g, k1, max_bytes)
    n = num_q + num_g
    # The CC code concatenates [[qq, qg], [qgᵀ, gg]] and works on its transpose.
    full = np.empty((n, n), dtype=np.float32)
    full[:num_q, :num_q] = q_q.T
    full[:num_q, num_q:] = q_g
    full[num_q:, :num_q] = q_g.T
    full[num_q:, num_q:] = g_g.T
    if not np.all(np.isfinite(full)):
        raise ReidctlError("re_ranking: the distance matrices contain NaN or infinite values")
    return _rerank_core(full, num_q, k1, k2, lambda_value)


# ----------------------------------------------------------------------------------------------
# features → metrics
# ----------------------------------------------------------------------------------------------


def evaluate_features(
    qf: Features,
    gf: Features,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    ap: str = "sklearn",
    rerank: bool = False,
    chunk: int = 2048,
    pairs: str = "market",
    *,
    max_rank: int = 50,
    device: str | torch.device | None = None,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    rerank_max_bytes: int = DEFAULT_RERANK_MAX_BYTES,
    also: Sequence[str] = (),
    per_query: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate query/gallery features with squared Euclidean distance, as the CC family.

    Without re-ranking, distances are computed ``chunk`` queries at a time and evaluated at
    straight away, so neither the Q×G distance matrix nor its sort ever exists (MSMT17:
    11,659 × 82,161 would be ~3.8 GB of distances plus ~7.7 GB of argsort indices).
    With ``rerank=True`` the dense (Q+G)² distances are needed; the memory is checked first
    (``rerank_max_bytes``). Returns what :func:`evaluate_ranking` returns; ``progress(done,
    num_queries)`` is called as query rows are evaluated.
    """
    _check_choice("ap", ap, AP_KINDS)
    for kind in also:
        _check_choice("ap", kind, AP_KINDS)
    _check_choice("pairs", pairs, PAIRS)
    if max_rank < 1:
        raise ValueError("max_rank must be >= 1")
    num_q, num_g = len(qf), len(gf)
    q_pids = _labels(q_pids, num_q, "q_pids")
    q_camids = _labels(q_camids, num_q, "q_camids")
    g_pids = _labels(g_pids, num_g, "g_pids")
    g_camids = _labels(g_camids, num_g, "g_camids")
    _check_cameras(pairs, q_camids, g_camids)

    if rerank:
        if k1 < 1 or k2 < 1:
            raise ValueError("k1 and k2 must be >= 1")
        _check_rerank_memory(num_q, num_g, k1, rerank_max_bytes)
        dev = _resolve_device(device, qf, gf)
        both = torch.cat(
            [_as_features(qf, dev, "query features"), _as_features(gf, dev, "gallery features")]
        )
        full = pairwise_distance(both, both, chunk=chunk, device=dev)  # symmetric up to rounding
        del both
        if not np.all(np.isfinite(full)):
            raise ReidctlError(_NON_FINITE)
        dist = _rerank_core(full, num_q, k1, k2, lambda_value)
        del full
        return evaluate_ranking(
            dist, q_pids, g_pids, q_camids, g_camids, ap=ap, max_rank=max_rank, pairs=pairs, also=also,
            per_query=per_query, progress=progress,
        )

    acc = _Accumulator(min(max_rank, num_g) if num_g else max_rank, also, num_q if per_query else None)
    step = max(1, _BLOCK_ELEMS // max(num_g, 1))
    for s, block in _distance_blocks(qf, gf, chunk, device):
        for t in range(0, block.shape[0], step):
            a, b = s + t, s + min(t + step, block.shape[0])
            _evaluate_block(
                block[t : t + step], q_pids[a:b], q_camids[a:b], g_pids, g_camids, pairs, ap, acc, a
            )
            if progress is not None:
                progress(b, num_q)
    return acc.result()
