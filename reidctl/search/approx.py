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
    n = x.shape[0]
    lo, hi = rows or (0, n)
    index = build_index(x, backend, settings, device, times)
    return index.search(np.arange(lo, hi), k, settings, progress)


def build_index(x: torch.Tensor, backend: str, settings: ApproxSettings = ApproxSettings(),
                device: torch.device = torch.device("cpu"), times: dict[str, float] | None = None,
                reduced: np.ndarray | None = None) -> "ApproxIndex":
    """The index of ``backend`` on the L2-normalised ``x`` (its build-time settings: ``pca_dim``,
    the IVF lists, HNSW's links), searched by :meth:`ApproxIndex.search` with any search-time
    settings: the recall tuning (:mod:`reidctl.search.tuning`) tries several on one index.
    ``reduced``: ``x`` already projected (:func:`pca_reduce` with these settings)."""
    if backend not in APPROX_BACKENDS:
        raise ReidctlError(f"unknown approximate kNN backend {backend!r} ({', '.join(APPROX_BACKENDS)})")
    faiss = require_faiss(backend)
    clock = _Clock(times)
    if reduced is None:
        reduced = clock("pca_s", pca_reduce, x, settings)
    cls = IvfIndex if backend == "faiss-ivf" else HnswIndex
    return clock("index_s", cls, faiss, x, reduced, settings, device, clock)


class ApproxIndex:
    """An index over the reduced features of ``x``; :meth:`search` returns exact distances."""

    backend: str

    def __init__(self, faiss: Any, x: torch.Tensor, reduced: np.ndarray, settings: ApproxSettings,
                 device: torch.device, clock: "_Clock") -> None:
        self.faiss, self.x, self.reduced, self.device, self.clock = faiss, x, reduced, device, clock
        self.pca_dim = settings.pca_dim if 0 < settings.pca_dim < x.shape[1] else 0

    def search(self, rows: np.ndarray, k: int, settings: ApproxSettings,
               progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` neighbours of the query rows ``rows`` (indices into ``x``) among all rows."""
        raise NotImplementedError


class HnswIndex(ApproxIndex):
    """A graph of the reduced features: faiss's HNSW on the CPU, or CAGRA on a GPU where the
    faiss build has it (faiss has no GPU HNSW); then ``candidates × k`` candidates re-ranked
    exactly."""

    backend = "faiss-hnsw"

    def __init__(self, faiss: Any, x: torch.Tensor, reduced: np.ndarray, settings: ApproxSettings,
                 device: torch.device, clock: "_Clock") -> None:
        super().__init__(faiss, x, reduced, settings, device, clock)
        self.on_gpu = device.type == "cuda" and gpu_index_available(faiss, "GpuIndexCagra")
        self.index = _build_cagra(faiss, reduced, settings) if self.on_gpu else _build_hnsw(faiss, reduced, settings)

    def search(self, rows: np.ndarray, k: int, settings: ApproxSettings,
               progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        n = self.x.shape[0]
        kc = candidate_count(settings, k, n)
        width = walk_width(settings, k, n)
        params = _cagra_params(self.faiss, width) if self.on_gpu else _hnsw_params(self.faiss, width)
        dist = np.empty((len(rows), k), np.float32)
        idx = np.empty((len(rows), k), np.int64)
        for s in range(0, len(rows), settings.block):
            block = rows[s:s + settings.block]
            _, cand = self.clock("search_s", self.index.search, _take(self.reduced, block), kc, params=params)
            cand = _with_self(cand.astype(np.int64), block)
            dist[s:s + len(block)], idx[s:s + len(block)] = self.clock(
                "rerank_s", exact_rerank, self.x, block, cand, k, self.device)
            if progress:
                progress(s + len(block), len(rows))
        return dist, idx


def candidate_count(settings: ApproxSettings, k: int, n: int | None = None) -> int:
    """The candidates an HNSW search re-ranks exactly: ``candidates × k`` (at least k, at most the
    ``n`` rows when given)."""
    kc = max(k, settings.candidates * k)
    return kc if n is None else min(n, kc)


def walk_width(settings: ApproxSettings, k: int, n: int | None = None) -> int:
    """The list faiss's HNSW walk really keeps: efSearch, or the candidates asked for when they are
    more (an efSearch below them changes nothing; the recall tuning widens from this)."""
    return max(settings.ef_search, candidate_count(settings, k, n))


class IvfIndex(ApproxIndex):
    """An inverted file of the reduced features (faiss's k-means, on the GPU when asked for and
    faiss-gpu is installed), searched with exact full-dimensional distances (:func:`ivf_search`)."""

    backend = "faiss-ivf"

    def __init__(self, faiss: Any, x: torch.Tensor, reduced: np.ndarray, settings: ApproxSettings,
                 device: torch.device, clock: "_Clock") -> None:
        super().__init__(faiss, x, reduced, settings, device, clock)
        self.on_gpu = device.type == "cuda" and gpu_index_available(faiss, "GpuIndexIVFFlat")
        self.centroids, self.assign = ivf_lists(faiss, reduced, settings, gpu=self.on_gpu)

    def search(self, rows: np.ndarray, k: int, settings: ApproxSettings,
               progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.clock("search_s", ivf_search, self, rows, k, settings.nprobe, progress)


def gpu_index_available(faiss: Any, name: str) -> bool:
    """True when this faiss build has the GPU index ``name`` and sees a GPU."""
    return hasattr(faiss, name) and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _take(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``a[rows]`` as a C-contiguous array, a view when the rows are one contiguous run."""
    if len(rows) and (np.diff(rows) == 1).all():
        return a[rows[0]:rows[-1] + 1]
    return np.ascontiguousarray(a[rows])


class _Clock:
    """Calls a function and adds its seconds to ``times[name]`` (nothing when ``times`` is None)."""

    def __init__(self, times: dict[str, float] | None) -> None:
        self.times = times

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        if self.times is not None:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t
        return out


def pca_reduce(x: torch.Tensor, settings: ApproxSettings,
               axes: tuple[torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
    """``x`` projected on its top ``pca_dim`` principal axes (estimated on an evenly spaced
    sample of rows), float32 and C-contiguous, as faiss wants it; ``x`` itself when D ≤ pca_dim.
    ``axes``: :func:`principal_axes` of ``x`` already computed (the tuning tries several
    dimensions on one decomposition)."""
    n, d = x.shape
    if not settings.pca_dim or d <= settings.pca_dim:
        return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    mean, vecs = axes if axes is not None else principal_axes(x, settings)
    top = vecs[:, :settings.pca_dim].contiguous()
    out = np.empty((n, settings.pca_dim), np.float32)
    mean32 = mean.float()
    for s in range(0, n, 16_384):
        out[s:s + 16_384] = ((x[s:s + 16_384].float() - mean32) @ top).numpy()
    return out


def principal_axes(x: torch.Tensor, settings: ApproxSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean row (float64) and every principal axis of ``x`` (D×D float32, columns by
    descending variance), from at most ``pca_samples`` evenly spaced rows."""
    n, d = x.shape
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
    return mean, vecs.flip(1).float()


def ivf_lists(faiss: Any, reduced: np.ndarray, st: ApproxSettings, gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The inverted file: k-means centroids of the reduced features (faiss, on at most
    ``train_per_list`` samples per list, ``niter`` iterations; on the GPU when ``gpu``) and each
    row's nearest centroid."""
    n, d = reduced.shape
    nlist = max(1, min(n // 8, round(st.lists_per_sqrt_n * math.sqrt(n))))
    rng = np.random.default_rng(st.seed)
    sample = reduced[np.sort(rng.choice(n, min(n, nlist * st.train_per_list), replace=False))]
    kmeans = faiss.Kmeans(d, nlist, niter=st.niter, seed=st.seed, max_points_per_centroid=st.train_per_list,
                          min_points_per_centroid=1, verbose=False, gpu=gpu)
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


def ivf_search(index: IvfIndex, rows: np.ndarray, k: int, nprobe: int,
               progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    """IVF search with exact full-dimensional distances: each query row is compared with the
    members of its ``nprobe`` nearest lists. Why not faiss's own IVF search: at D = 2,048 it
    scans a list one vector at a time (a few GFLOPS here), slower than the exact blocked search;
    here every list is one matrix product (on the index's device) of the queries that probe it
    with its members."""
    x, device, centroids, assign = index.x, index.device, index.centroids, index.assign
    nprobe = min(len(centroids), nprobe)
    probes = _nearest_centroids(_take(index.reduced, rows), centroids, nprobe)  # queries × nprobe
    order = np.argsort(assign, kind="stable")  # members of each list, ascending row
    starts = np.searchsorted(assign[order], np.arange(len(centroids) + 1))
    q_of = np.argsort(probes.ravel(), kind="stable")  # (query, slot) pairs grouped by list
    q_starts = np.searchsorted(probes.ravel()[q_of], np.arange(len(centroids) + 1))
    nq = len(rows)
    cand_sim = np.full((nq, nprobe, k), -np.inf, np.float32)
    cand_idx = np.full((nq, nprobe, k), -1, np.int64)
    done = 0
    for lst in range(len(centroids)):
        pairs = q_of[q_starts[lst]:q_starts[lst + 1]]
        members = order[starts[lst]:starts[lst + 1]]
        if len(pairs) == 0 or len(members) == 0:
            continue
        qi, slot = pairs // nprobe, pairs % nprobe
        sims = (x[torch.from_numpy(rows[qi])].to(device, torch.float32)
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
        dist[short], idx[short] = search(x[torch.from_numpy(rows[short])], x, k, device=str(device))
    return dist, idx


def _build_hnsw(faiss: Any, data: np.ndarray, st: ApproxSettings) -> Any:
    """The HNSW graph of the reduced features, on the CPU."""
    index = faiss.IndexHNSWFlat(data.shape[1], st.hnsw_m)
    index.hnsw.efConstruction = st.ef_construction
    index.add(data)
    return index


def _hnsw_params(faiss: Any, width: int) -> Any:
    """Search parameters of the HNSW graph: ``width`` (efSearch) candidates kept while walking."""
    params = faiss.SearchParametersHNSW()
    params.efSearch = width
    return params


def _build_cagra(faiss: Any, data: np.ndarray, st: ApproxSettings) -> Any:
    """CAGRA, faiss's GPU graph index (faiss ≥ 1.8 built with cuVS), of the reduced features:
    ``hnsw_m`` out-links a node, as the CPU graph has."""
    config = faiss.GpuIndexCagraConfig()
    config.graph_degree = st.hnsw_m
    config.intermediate_graph_degree = 2 * st.hnsw_m
    index = faiss.GpuIndexCagra(faiss.StandardGpuResources(), data.shape[1], faiss.METRIC_L2, config)
    index.train(data)  # CAGRA builds its graph from the data it is trained on
    return index


def _cagra_params(faiss: Any, width: int) -> Any:
    """Search parameters of CAGRA: ``width`` (its itopk size, HNSW's efSearch) candidates kept."""
    params = faiss.SearchParametersCagra()
    params.itopk_size = width
    return params


def _with_self(cand: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Candidates with each row's own index (the exact kNN lists always hold the point itself);
    it replaces the last candidate where the reduced search missed it, or a -1 (no result)."""
    own = np.asarray(rows, dtype=np.int64)
    missing = ~(cand == own[:, None]).any(1)
    cand[missing, -1] = own[missing]
    bad = cand < 0
    if bad.any():  # fewer results than asked (tiny lists): repeat the row itself, dropped as duplicates later
        cand[bad] = np.broadcast_to(own[:, None], cand.shape)[bad]
    return cand


def exact_rerank(x: torch.Tensor, rows: np.ndarray, cand: np.ndarray, k: int,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` candidates ``cand[i]`` of each query row ``rows[i]`` nearest by the exact distance
    ``2 − 2·cos``; ties and duplicate candidates resolved by the smaller index, as the exact
    search does."""
    b = cand.shape[0]
    out_d = np.empty((b, k), np.float32)
    out_i = np.empty((b, k), np.int64)
    sims = _candidate_similarities(x, np.asarray(rows, dtype=np.int64), cand, device)
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


def _candidate_similarities(x: torch.Tensor, rows: np.ndarray, cand: np.ndarray, device: torch.device) -> np.ndarray:
    """``sim[i, j] = x[rows[i]] · x[cand[i, j]]`` in float32.

    Why faiss on the CPU: gathering each row's candidate vectors into a tensor and multiplying
    (torch) moves every candidate through memory twice and ran at ≈ 2.6 GB/s here, the largest
    cost of the approximate search (issue 18); faiss's ``fvec_inner_products_by_idx`` reads each
    candidate in place, ≈ 10× faster. On a GPU the gather is cheap and torch keeps it there."""
    b, kc = cand.shape
    if device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous():
        faiss = require_faiss("faiss-hnsw")
        xs = x.numpy()
        queries = _take(xs, rows)
        ids = np.ascontiguousarray(cand, dtype=np.int64)
        sims = np.empty((b, kc), np.float32)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(sims), faiss.swig_ptr(queries), faiss.swig_ptr(xs),
                                         faiss.swig_ptr(ids), x.shape[1], b, kc)
        return sims
    sims = np.empty((b, kc), np.float32)
    step = max(1, (1 << 26) // max(1, kc * x.shape[1]))  # gathered candidates ≤ 256 MiB per block
    for s in range(0, b, step):
        e = min(b, s + step)
        q = x[torch.from_numpy(rows[s:e])].to(device, torch.float32)
        g = x[torch.from_numpy(cand[s:e]).reshape(-1)].to(device, torch.float32).reshape(e - s, kc, -1)
        sims[s:e] = torch.bmm(g, q.unsqueeze(2)).squeeze(2).cpu().numpy()
    return sims
