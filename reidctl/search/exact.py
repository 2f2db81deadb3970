"""Exact k-nearest-neighbour search of L2-normalised features, by blocks of rows.

Why blocked: the full N×N similarity matrix is 4·N² bytes (4.3 GB at MSMT17 scale, 40 GB at
100k), while a block of rows times all of X is enough to take each row's top k. Memory is
O(block_size·N + N·D), time is one N×N×D matrix product plus a linear top-k pass.

Distances are squared L2 distances of unit vectors, ``2 - 2·cos``, in ascending order. Each
point is searched against all points, itself included, so column 0 is the point itself unless
an exact duplicate with a smaller index ties with it. Ties are broken by the smaller index, so
results do not depend on the device, the block size or the backend.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from reidctl.errors import ReidctlError
from reidctl.runtime.device import resolve_device

Progress = Callable[[int, int], None]

# Target size of one block of similarities (float32 elements), a compromise between matmul
# efficiency (wide blocks: BLAS re-packs X for every block) and memory: 256 MiB on the CPU,
# 512 MiB on a GPU, and at least _MIN_BLOCK_ROWS rows (thin blocks run ~15% slower).
_BLOCK_ELEMENTS = {"cpu": 1 << 26, "cuda": 1 << 27}
_MIN_BLOCK_ROWS = 1024


def faiss_gpu_available() -> bool:
    """True when ``faiss`` imports and sees at least one GPU (faiss-gpu installed)."""
    try:
        import faiss  # noqa: PLC0415
    except ImportError:
        return False
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get and get() > 0)


def check_normalised(feats: np.ndarray | torch.Tensor, atol: float = 1e-3) -> None:
    """Raise unless every row has unit L2 norm: ``2 - 2·cos`` is only a distance then."""
    x = torch.as_tensor(feats)
    if x.ndim != 2:
        raise ReidctlError(f"features must be an N×D matrix, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        return
    norms = torch.linalg.vector_norm(x.float(), dim=1)
    bad = (norms - 1).abs() > atol
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ReidctlError(
            f"features must be L2-normalised (row {i} has norm {float(norms[i]):.4f}); "
            "normalise them first, e.g. x / ‖x‖"
        )


#: ``exclude(start, end)``: for query rows start..end-1, a bool (rows × G) tensor of the gallery
#: items that must not be returned for each row (None: none excluded in this block).
Exclude = Callable[[int, int], "torch.Tensor | None"]


def search(
    query: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    k: int,
    *,
    device: str = "auto",
    block_size: int | None = None,
    progress: Progress | None = None,
    exclude: Exclude | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` gallery items of every query row: the blocked search of :func:`knn`, with a
    query set that differs from the searched one (ranking a gallery).

    Returns ``(dist, idx)``, Q×k float32 / int64, squared L2 distances of unit vectors in
    ascending order with ties by ascending gallery index. ``exclude`` removes gallery items per
    query (another camera only, the query's own image ...); where fewer than ``k`` items remain,
    the row ends with distance ``inf`` and index ``-1``. ``k`` may exceed the gallery size (the
    surplus is padded the same way).
    """
    q, x = torch.as_tensor(query), torch.as_tensor(gallery)
    check_normalised(q)
    check_normalised(x)
    if k < 1:
        raise ReidctlError(f"k must be at least 1, got {k}")
    if q.ndim == 2 and x.ndim == 2 and q.shape[1] != x.shape[1] and len(q) and len(x):
        raise ReidctlError(f"query features have {q.shape[1]} dimensions but the gallery's have {x.shape[1]}")
    n_q, n_g = q.shape[0], x.shape[0]
    kk = min(k, n_g)
    dist = np.full((n_q, k), np.inf, np.float32)
    idx = np.full((n_q, k), -1, np.int64)
    if n_q and kk:
        d, i = search_blocks(q, x, kk, resolve_device(device), block_size, progress, exclude)
        dist[:, :kk], idx[:, :kk] = d, i
    return dist, idx


def search_blocks(
    q: torch.Tensor, x: torch.Tensor, k: int, dev: torch.device, block_size: int | None,
    progress: Progress | None, exclude: Exclude | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of ``q`` among the rows of ``x`` (``q is x`` for a self-search), by
    blocks of query rows; excluded items come out as distance inf and index -1."""
    n_q, n = q.shape[0], x.shape[0]
    same = q is x
    x = x.to(dev, torch.float32).contiguous()
    q = x if same else q.to(dev, torch.float32).contiguous()
    xt = x.T
    budget = _BLOCK_ELEMENTS.get(dev.type, _BLOCK_ELEMENTS["cpu"])
    b = block_size or int(np.clip(budget // max(n, 1), _MIN_BLOCK_ROWS, 16384))
    b = max(1, min(b, n_q))
    dist = np.empty((n_q, k), np.float32)
    idx = np.empty((n_q, k), np.int64)
    buf = torch.empty((b, n), dtype=torch.float32, device=dev)  # reused: no page faults per block
    for s in range(0, n_q, b):
        e = min(n_q, s + b)
        sim = buf[: e - s]
        torch.mm(q[s:e], xt, out=sim)
        banned = exclude(s, e) if exclude else None
        if banned is not None:
            sim.masked_fill_(banned.to(dev), -torch.inf)
        top, arg = _block_topk(sim, k)
        d = (2 - 2 * top).clamp_(min=0)
        gone = torch.isinf(top)  # excluded items: never a result
        d[gone], arg[gone] = torch.inf, -1
        dist[s:e] = d.cpu().numpy()
        idx[s:e] = arg.cpu().numpy()
        if progress:
            progress(e, n_q)
    return tie_order(dist, idx)


def _block_topk(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest ``k`` similarities of each row, ties at the k-th place resolved to the smallest
    indices (so results do not depend on the device or the block size)."""
    n = sim.shape[1]
    kk = min(k + 1, n)  # one extra column shows whether the k-th value is tied
    top, arg = torch.topk(sim, kk, dim=1, largest=True, sorted=True)
    if kk > k:
        for r in (top[:, k] == top[:, k - 1]).nonzero().flatten().tolist():
            row = sim[r]  # tie at the boundary: take the smallest indices among equals
            keep = (row >= top[r, k - 1]).nonzero().flatten()  # ascending index
            order = torch.sort(row[keep], descending=True, stable=True).indices[:k]
            arg[r, :k] = keep[order]
            top[r, :k] = row[arg[r, :k]]
        top, arg = top[:, :k], arg[:, :k]
    return top, arg


def tie_order(dist: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, index): deterministic order among equal distances."""
    order = np.lexsort((idx, dist), axis=-1) if dist.size else np.empty_like(idx)
    return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)


def knn_faiss(x: torch.Tensor, k: int, device: str, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    try:
        import faiss  # noqa: PLC0415
    except ImportError:
        raise ReidctlError(
            "the faiss backend needs faiss-gpu: pip install 'reidctl[gpu]'"
        ) from None
    xs = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    qs = xs if lo == 0 and hi in (None, len(xs)) else xs[lo:hi]
    want_cpu = device != "auto" and torch.device(device).type == "cpu"
    if want_cpu:
        dist, idx = faiss.knn(qs, xs, k, metric=faiss.METRIC_L2)
    else:
        if not faiss_gpu_available():
            raise ReidctlError(
                "the faiss backend found no GPU; install faiss-gpu (pip install 'reidctl[gpu]') "
                "or use --knn-backend torch"
            )
        gpu = torch.device(device).index if device.startswith("cuda:") else 0
        res = faiss.StandardGpuResources()
        dist, idx = faiss.knn_gpu(res, qs, xs, k, metric=faiss.METRIC_L2, device=gpu or 0)
    return np.maximum(dist, 0).astype(np.float32), idx.astype(np.int64)
