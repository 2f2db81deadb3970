"""k-nearest neighbours of L2-normalised features: the backend choice and :func:`knn`, which
searches exactly (:mod:`reidctl.search.exact`) or, for a large N, approximately with an exact
re-ranking (:mod:`reidctl.search.approx`). Distances are ``2 - 2·cos`` in ascending order, ties
by the smaller index.
"""

from __future__ import annotations

import numpy as np
import torch

from reidctl.errors import ReidctlError
from reidctl.runtime.device import resolve_device
from reidctl.search.approx import APPROX_BACKENDS, approx_knn
from reidctl.search.exact import (
    Exclude,
    Progress,
    check_normalised,
    faiss_gpu_available,
    knn_faiss,
    search,
    search_blocks,
    tie_order,
)

__all__ = ["APPROX_BACKENDS", "AUTO_APPROX", "EXACT_BUDGET", "KNN_BACKENDS", "Exclude", "Progress", "check_normalised",
           "choose_backend", "faiss_available", "faiss_gpu_available", "knn", "search"]


#: ``--knn-backend`` choices: exact (torch, faiss) and approximate (:mod:`reidctl.search.approx`).
KNN_BACKENDS = ("auto", "torch", "faiss", "faiss-ivf", "faiss-hnsw")
#: Above this many multiply-adds (N²·D) exact search is not affordable and ``auto`` switches to
#: the approximate ``faiss-hnsw``: about 2-3 minutes of exact search on two idle CPU cores
#: (N ≈ 110k at D = 2,048), ten minutes or more on a GPU.
EXACT_BUDGET = {"cpu": 2.5e13, "cuda": 2e15}
#: The approximate backend ``auto`` switches to (bench/README.md § knn_approx.py: recall@30 0.99
#: and the exact partition on CNN features at N = 100k, 6× faster than exact search).
AUTO_APPROX = "faiss-hnsw"


def faiss_available() -> bool:
    """True when ``faiss`` (CPU or GPU build) imports."""
    try:
        import faiss  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def choose_backend(n: int, d: int, backend: str = "auto", device: str = "auto") -> tuple[str, str | None]:
    """The backend :func:`knn` uses for N×D features, and a sentence for the stage's output when
    ``auto`` leaves exact search (or would, but faiss is missing).

    ``auto`` is exact (faiss-gpu on a GPU where installed, else torch) while N²·D stays within
    :data:`EXACT_BUDGET`, and :data:`AUTO_APPROX` beyond it. The switch is said, because an
    approximate search may change the clusters: its recall is measured, not guaranteed.
    """
    if backend not in KNN_BACKENDS:
        raise ReidctlError(f"unknown kNN backend {backend!r} ({', '.join(KNN_BACKENDS)})")
    if backend != "auto":
        return backend, None
    dev = resolve_device(device)
    exact = "faiss" if dev.type != "cpu" and faiss_gpu_available() else "torch"
    cost = float(n) * n * d
    if cost <= EXACT_BUDGET.get(dev.type, EXACT_BUDGET["cpu"]):
        return exact, None
    size = f"exact kNN of {n:,} × {n:,} × {d} ({cost:.1e} multiply-adds) is too slow on this {dev.type}"
    if faiss_available():
        return AUTO_APPROX, (f"--knn-backend auto: {size}; using {AUTO_APPROX} (approximate, re-ranked exactly; "
                             "recall in bench/README.md). --knn-backend torch keeps exact search")
    return exact, (f"--knn-backend auto: {size}, but the approximate backends need faiss "
                   "(pip install 'reidctl[faiss]'); searching exactly")


def knn(
    feats: np.ndarray | torch.Tensor,
    k: int,
    *,
    backend: str = "auto",
    device: str = "auto",
    block_size: int | None = None,
    progress: Progress | None = None,
    rows: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """kNN of every row of ``feats`` among all rows (itself included), exact unless ``backend`` is
    ``faiss-ivf``/``faiss-hnsw`` or ``auto`` chose one for a large N (:func:`choose_backend`).

    Returns ``(dist, idx)``: float32 and int64 arrays of shape N×k, squared L2 distances
    (``2 - 2·cos``, clipped at 0) in ascending order, ties by ascending index.
    ``backend="auto"`` searches exactly with faiss-gpu when it is installed and a GPU is visible,
    else torch (on CUDA when available); faiss's exact CPU search is used only when asked for.
    ``progress(done_rows, total_rows)`` is called after each block. With faiss, ties at the
    k-th place are resolved as faiss does; the torch backend keeps the smallest indices.
    ``rows=(lo, hi)``: only those query rows (searched against all rows): one rank's share
    under ``torchrun``; the result has ``hi - lo`` rows.
    """
    x = torch.as_tensor(feats)
    check_normalised(x)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ReidctlError(f"k must be between 1 and the number of samples ({n}), got {k}")
    lo, hi = rows or (0, n)
    backend, _ = choose_backend(n, x.shape[1], backend, device)
    if backend in APPROX_BACKENDS:
        return approx_knn(x, k, backend, rows=(lo, hi), device=resolve_device(device), progress=progress)
    if backend == "faiss":
        dist, idx = knn_faiss(x, k, device, lo, hi)
        if progress:
            progress(hi - lo, hi - lo)
        return tie_order(dist, idx)
    queries = x if rows is None else x[lo:hi]  # ``x`` itself: search_blocks moves it to the device once
    return search_blocks(queries, x, k, resolve_device(device), block_size, progress)
