"""Approximate kNN for large N: a faiss index on PCA-reduced features, then an exact re-rank.

Why this shape: exact kNN costs N²·D (1M × 1M × 2,048 ≈ 4·10¹⁵ multiply-adds, hours on two
cores). An index on the full 2,048 dimensions makes every step D-proportional: training the IVF
quantizer (samples × lists × D × iterations) alone outlasted exact search at N = 100k in a probe
(issue 18). So both backends work on the features projected onto their top ``pca_dim`` principal
axes (16× fewer dimensions at D = 2,048), retrieve ``candidates × k`` neighbours there, and re-rank
those candidates with the exact full-dimensional distances. The distances returned are therefore
exact; only a true neighbour the reduced search missed can be absent (measured as recall@k in
``bench/cluster.py``).

* ``faiss-ivf``: an inverted file (``IndexIVFFlat``), ``round(lists_per_sqrt_n · √N)`` lists whose
  k-means runs on at most ``train_per_list`` samples per list for ``niter`` iterations (the cost
  the issue asks to budget), searched with ``nprobe`` lists.
* ``faiss-hnsw``: a graph (``IndexHNSWFlat``, ``hnsw_m`` links, ``ef_construction``/``ef_search``).

Defaults (:class:`ApproxSettings`): HNSW's were tuned on CNN features of 97k images
(recall@30 0.992 and ARI 0.995 against the exact pipeline, 6.3× faster than exact search;
bench/README.md). On ``bench/cluster.py``'s near-isotropic synthetic features neither backend keeps
the clusters.

The exact re-rank reads each row's candidates in place (faiss's by-index inner products) rather
than gathering them into a tensor: the gather was the largest cost before (13 of 25 s at 97k).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reidctl.errors import ReidctlError
from reidctl.search.exact import Progress, search

APPROX_BACKENDS = ("faiss-ivf", "faiss-hnsw")


@dataclass(frozen=True)
class ApproxSettings:
    """Every setting of the approximate backends, in one place."""

    pca_dim: int = 128  # 0: search the full dimension
    pca_samples: int = 100_000  # rows the principal axes are estimated from
    candidates: int = 2  # candidates × k neighbours are re-ranked exactly
    lists_per_sqrt_n: float = 4.0  # IVF lists = round(this · √N)
    train_per_list: int = 32  # IVF k-means samples per list (faiss warns below 39; 32 was enough here)
    niter: int = 10  # IVF k-means iterations
    nprobe: int = 32  # IVF lists searched per query
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 96
    seed: int = 1234
    block: int = 16_384  # query rows per search call (progress, memory)


def require_faiss(backend: str) -> Any:
    """The faiss module, or a one-line error that says how to install it."""
    try:
        import faiss  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise ReidctlError(f"--knn-backend {backend} needs faiss: pip install 'reidctl[faiss]' (CPU) or "
                           "'reidctl[gpu]' (faiss-gpu)") from None
    return faiss


def approx_knn(x: torch.Tensor, k: int, backend: str, *, rows: tuple[int, int] | None = None,
               device: torch.device = torch.device("cpu"), settings: ApproxSettings = ApproxSettings(),
               progress: Progress | None = None, times: dict[str, float] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``k`` approximate nearest neighbours of rows ``rows`` (default: all) of the L2-normalised
    ``x`` among all its rows, as :func:`reidctl.search.knn` returns them: squared L2 distances
    (exact, from the re-rank) ascending, ties by index, each row's own index among its neighbours.
    ``times``, when given, receives the seconds of each step (``pca_s``, ``index_s``,
    ``search_s``, ``rerank_s``): the benchmarks show where the time goes."""
    if backend not in APPROX_BACKENDS:
        raise ReidctlError(f"unknown approximate kNN backend {backend!r} ({', '.join(APPROX_BACKENDS)})")
    faiss = require_faiss(backend)
    clock = _Clock(times)
    n = x.shape[0]
    lo, hi = rows or (0, n)
    reduced = clock("pca_s", pca_reduce, x, settings)
    if backend == "faiss-ivf":
        return clock("search_s", ivf_knn, faiss, x, reduced, k, (lo, hi), device, settings, progress)
    index = clock("index_s", _build_hnsw, faiss, reduced, settings)
    kc = min(n, max(k, settings.candidates * k))
    dist = np.empty((hi - lo, k), np.float32)
    idx = np.empty((hi - lo, k), np.int64)
    for s in range(lo, hi, settings.block):
        e = min(hi, s + settings.block)
        _, cand = clock("search_s", index.search, reduced[s:e], kc)
        cand = _with_self(cand.astype(np.int64), s)
        dist[s - lo:e - lo], idx[s - lo:e - lo] = clock("rerank_s", exact_rerank, x, s, cand, k, device)
        if progress:
            progress(e - lo, hi - lo)
    return dist, idx


class _Clock:
    """Calls a function and adds its seconds to ``times[name]`` (nothing when ``times`` is None)."""

    def __init__(self, times: dict[str, float] | None) -> None:
        self.times = times

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args)
        if self.times is not None:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t
        return out


def pca_reduce(x: torch.Tensor, settings: ApproxSettings) -> np.ndarray:
    """``x`` projected on its top ``pca_dim`` principal axes (estimated on an evenly spaced
    sample of rows), float32 and C-contiguous, as faiss wants it; ``x`` itself when D ≤ pca_dim."""
    n, d = x.shape
    if not settings.pca_dim or d <= settings.pca_dim:
        return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    step = max(1, n // settings.pca_samples)
    sample = x[::step][: settings.pca_samples]
    total = torch.zeros(d, dtype=torch.float64)
    gram = torch.zeros((d, d), dtype=torch.float64)
    for s in range(0, len(sample), 16_384):  # blocks of 16k rows: no sample-sized copy
        block = sample[s:s + 16_384].float()
        total += block.sum(0, dtype=torch.float64)
        gram += (block.T @ block).double()  # float32 products (unit rows), float64 sums
    mean = total / len(sample)
    cov = (gram - len(sample) * torch.outer(mean, mean)) / max(1, len(sample) - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    axes = vecs[:, -settings.pca_dim:].flip(1).float()
    out = np.empty((n, settings.pca_dim), np.float32)
    mean32 = mean.float()
    for s in range(0, n, 16_384):
        out[s:s + 16_384] = ((x[s:s + 16_384].float() - mean32) @ axes).numpy()
    return out


def ivf_lists(faiss: Any, reduced: np.ndarray, st: ApproxSettings) -> tuple[np.ndarray, np.ndarray]:
    """The inverted file: k-means centroids of the reduced features (faiss, on at most
    ``train_per_list`` samples per list, ``niter`` iterations) and each row's nearest centroid."""
    n, d = reduced.shape
    nlist = max(1, min(n // 8, round(st.lists_per_sqrt_n * math.sqrt(n))))
    rng = np.random.default_rng(st.seed)
    sample = reduced[np.sort(rng.choice(n, min(n, nlist * st.train_per_list), replace=False))]
    kmeans = faiss.Kmeans(d, nlist, niter=st.niter, seed=st.seed, max_points_per_centroid=st.train_per_list,
                          min_points_per_centroid=1, verbose=False)
    kmeans.train(sample)
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    return centroids, _nearest_centroids(reduced, centroids, 1)[:, 0]


def _nearest_centroids(data: np.ndarray, centroids: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` nearest centroids (squared L2) of every row, by blocks of matrix products."""
    c = torch.from_numpy(centroids)
    c_norm = (c * c).sum(1)
    out = np.empty((len(data), m), np.int64)
    for s in range(0, len(data), 65_536):
        q = torch.from_numpy(data[s:s + 65_536])
        d2 = c_norm[None, :] - 2 * (q @ c.T)  # + ‖q‖², the same for every centroid of a row
        out[s:s + 65_536] = torch.topk(d2, m, dim=1, largest=False).indices.numpy()
    return out


def ivf_knn(faiss: Any, x: torch.Tensor, reduced: np.ndarray, k: int, rows: tuple[int, int], device: torch.device,
            st: ApproxSettings, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    """IVF search with exact full-dimensional distances: each query row is compared with the
    members of its ``nprobe`` nearest lists. Why not faiss's own IVF search: at D = 2,048 it
    scans a list one vector at a time (a few GFLOPS here), slower than the exact blocked search;
    here every list is one matrix product of the queries that probe it with its members."""
    lo, hi = rows
    centroids, assign = ivf_lists(faiss, reduced, st)
    nprobe = min(len(centroids), st.nprobe)
    probes = _nearest_centroids(reduced[lo:hi], centroids, nprobe)  # (hi-lo) × nprobe
    order = np.argsort(assign, kind="stable")  # members of each list, ascending row
    starts = np.searchsorted(assign[order], np.arange(len(centroids) + 1))
    q_of = np.argsort(probes.ravel(), kind="stable")  # (query, slot) pairs grouped by list
    q_starts = np.searchsorted(probes.ravel()[q_of], np.arange(len(centroids) + 1))
    nq = hi - lo
    cand_sim = np.full((nq, nprobe, k), -np.inf, np.float32)
    cand_idx = np.full((nq, nprobe, k), -1, np.int64)
    done = 0
    for lst in range(len(centroids)):
        pairs = q_of[q_starts[lst]:q_starts[lst + 1]]
        members = order[starts[lst]:starts[lst + 1]]
        if len(pairs) == 0 or len(members) == 0:
            continue
        qi, slot = pairs // nprobe, pairs % nprobe
        sims = (x[torch.from_numpy(lo + qi)].to(device, torch.float32)
                @ x[torch.from_numpy(members)].to(device, torch.float32).T)
        kk = min(k, len(members))
        top, arg = torch.topk(sims, kk, dim=1)
        cand_sim[qi, slot, :kk] = top.cpu().numpy()
        cand_idx[qi, slot, :kk] = members[arg.cpu().numpy()]
        done += len(pairs)
        if progress:
            progress(done // nprobe, nq)
    sim = cand_sim.reshape(nq, -1)
    idx = cand_idx.reshape(nq, -1)
    best = np.lexsort((np.where(idx < 0, np.iinfo(np.int64).max, idx), -sim), axis=1)[:, :k]
    idx = np.take_along_axis(idx, best, 1)
    dist = np.maximum(2 - 2 * np.take_along_axis(sim, best, 1).astype(np.float64), 0).astype(np.float32)
    short = np.flatnonzero((idx < 0).any(1))  # probed lists held fewer than k rows: search those exactly
    if len(short):
        dist[short], idx[short] = search(x[torch.from_numpy(lo + short)], x, k, device=str(device))
    return dist, idx


def _build_hnsw(faiss: Any, data: np.ndarray, st: ApproxSettings) -> Any:
    """The HNSW graph of the reduced features (faiss has no GPU HNSW: it stays on the CPU)."""
    index = faiss.IndexHNSWFlat(data.shape[1], st.hnsw_m)
    index.hnsw.efConstruction = st.ef_construction
    index.add(data)
    index.hnsw.efSearch = max(st.ef_search, st.candidates * 32)
    return index


def _with_self(cand: np.ndarray, first_row: int) -> np.ndarray:
    """Candidates with each row's own index (the exact kNN lists always hold the point itself);
    it replaces the last candidate where the reduced search missed it, or a -1 (no result)."""
    own = first_row + np.arange(len(cand))
    missing = ~(cand == own[:, None]).any(1)
    cand[missing, -1] = own[missing]
    bad = cand < 0
    if bad.any():  # fewer results than asked (tiny lists): repeat the row itself, dropped as duplicates later
        cand[bad] = np.broadcast_to(own[:, None], cand.shape)[bad]
    return cand


def exact_rerank(x: torch.Tensor, first_row: int, cand: np.ndarray, k: int,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` candidates of each row nearest by the exact distance ``2 − 2·cos``; ties and
    duplicate candidates resolved by the smaller index, as the exact search does."""
    b = cand.shape[0]
    out_d = np.empty((b, k), np.float32)
    out_i = np.empty((b, k), np.int64)
    sims = _candidate_similarities(x, first_row, cand, device)
    for s in range(0, b, 65_536):
        e = min(b, s + 65_536)
        ci, sim = cand[s:e], sims[s:e].astype(np.float64)
        order = np.lexsort((ci, -sim), axis=1)
        ci, d = np.take_along_axis(ci, order, 1), np.maximum(2 - 2 * np.take_along_axis(sim, order, 1), 0)
        dup = np.zeros_like(ci, dtype=bool)
        dup[:, 1:] = ci[:, 1:] == ci[:, :-1]  # sorted by (distance, index): duplicates are adjacent
        keep = np.argsort(dup, axis=1, kind="stable")[:, :k]
        out_i[s:e] = np.take_along_axis(ci, keep, 1)
        out_d[s:e] = np.take_along_axis(d, keep, 1)
    return out_d, out_i


def _candidate_similarities(x: torch.Tensor, first_row: int, cand: np.ndarray, device: torch.device) -> np.ndarray:
    """``sim[i, j] = x[first_row + i] · x[cand[i, j]]`` in float32.

    Why faiss on the CPU: gathering each row's candidate vectors into a tensor and multiplying
    (torch) moves every candidate through memory twice and ran at ≈ 2.6 GB/s here, the largest
    cost of the approximate search (issue 18); faiss's ``fvec_inner_products_by_idx`` reads each
    candidate in place, ≈ 10× faster. On a GPU the gather is cheap and torch keeps it there."""
    b, kc = cand.shape
    if device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous():
        faiss = require_faiss("faiss-hnsw")
        xs = x.numpy()
        queries = np.ascontiguousarray(xs[first_row:first_row + b])
        ids = np.ascontiguousarray(cand, dtype=np.int64)
        sims = np.empty((b, kc), np.float32)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(sims), faiss.swig_ptr(queries), faiss.swig_ptr(xs),
                                         faiss.swig_ptr(ids), x.shape[1], b, kc)
        return sims
    sims = np.empty((b, kc), np.float32)
    step = max(1, (1 << 26) // max(1, kc * x.shape[1]))  # gathered candidates ≤ 256 MiB per block
    for s in range(0, b, step):
        e = min(b, s + step)
        q = x[first_row + s:first_row + e].to(device, torch.float32)
        g = x[torch.from_numpy(cand[s:e]).reshape(-1)].to(device, torch.float32).reshape(e - s, kc, -1)
        sims[s:e] = torch.bmm(g, q.unsqueeze(2)).squeeze(2).cpu().numpy()
    return sims
