"""k-nearest neighbours of L2-normalised features: the backend choice and :func:`knn`, which
searches exactly (:mod:`reidctl.search.exact`) or, for a large N, approximately with an exact
re-ranking (:mod:`reidctl.search.approx`). Distances are ``2 - 2·cos`` in ascending order, ties
by the smaller index.

An approximate search is never trusted blindly (:func:`knn_search`): ``auto`` tunes its settings
until a recall target holds on a sample (:mod:`reidctl.search.tuning`) or searches exactly, and
every approximate search reports the recall@k measured on a seeded sample against exact search
(:mod:`reidctl.search.probe`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reidctl.errors import ReidctlError
from reidctl.runtime.device import resolve_device
from reidctl.search.approx import APPROX_BACKENDS, ApproxSettings, build_index
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
from reidctl.search.probe import RecallProbe, probe_recall
from reidctl.search.tuning import DEFAULT_RECALL, RecallTarget, Tuned, agreed, tune

__all__ = ["APPROX_BACKENDS", "AUTO_APPROX", "DEFAULT_RECALL", "EXACT_BUDGET", "KNN_BACKENDS", "Exclude", "Progress",
           "RecallProbe", "RecallTarget", "Searched", "check_normalised", "choose_backend", "exact_backend", "faiss_available",
           "faiss_gpu_available", "knn", "knn_search", "probe_recall", "recall_report", "search"]


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


def exact_backend(dev: torch.device) -> str:
    """The exact backend of a device: faiss-gpu on a GPU where installed, else torch."""
    return "faiss" if dev.type != "cpu" and faiss_gpu_available() else "torch"


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
    exact = exact_backend(dev)
    cost = float(n) * n * d
    if cost <= EXACT_BUDGET.get(dev.type, EXACT_BUDGET["cpu"]):
        return exact, None
    size = f"exact kNN of {n:,} × {n:,} × {d} ({cost:.1e} multiply-adds) is too slow on this {dev.type}"
    if faiss_available():
        return AUTO_APPROX, (f"--knn-backend auto: {size}; using {AUTO_APPROX} (approximate, re-ranked exactly, "
                             "tuned until its recall on a sample reaches --knn-recall). "
                             "--knn-backend torch keeps exact search")
    return exact, (f"--knn-backend auto: {size}, but the approximate backends need faiss "
                   "(pip install 'reidctl[faiss]'); searching exactly")


@dataclass
class Searched:
    """What :func:`knn_search` found and how: the lists, the backend that searched (exact when
    ``auto`` fell back), the recall probe of an approximate search, the tuning's record, and a
    sentence for the user: the probe's recall, or why the search fell back to exact search."""

    dist: np.ndarray
    idx: np.ndarray
    backend: str
    settings: ApproxSettings | None = None  # an approximate search's settings
    probe: RecallProbe | None = None
    tuning: Tuned | None = None
    note: str | None = None
    warn: bool = False  # the note is a warning: a fallback, or a probe below the target

    def __iter__(self) -> Any:
        """``dist, idx = found``: the lists, as :func:`knn` returns them (a clustering algorithm
        of a plugin unpacks its ``stage_knn`` so)."""
        return iter((self.dist, self.idx))

    def report(self) -> dict[str, Any]:
        """The probe and the tuning, for a stage's summary (empty after an exact search)."""
        out: dict[str, Any] = {}
        if self.probe is not None:
            out["knn_probe"] = self.probe.to_json()
        if self.tuning is not None:
            out["knn_tuning"] = self.tuning.to_json()
        if self.note:
            out["knn_recall_note"] = self.note
        return out


def knn(
    feats: np.ndarray | torch.Tensor,
    k: int,
    *,
    backend: str = "auto",
    device: str = "auto",
    block_size: int | None = None,
    progress: Progress | None = None,
    rows: tuple[int, int] | None = None,
    recall: float = DEFAULT_RECALL,
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
    under ``torchrun``; the result has ``hi - lo`` rows. An approximate search that fell back to
    exact search or stayed below ``recall`` says so as a warning (:func:`knn_search` returns it).
    """
    found = knn_search(feats, k, backend=backend, device=device, block_size=block_size, progress=progress, rows=rows,
                       recall=recall)
    if found.warn:
        warnings.warn(found.note, stacklevel=2)
    return found.dist, found.idx


def knn_search(
    feats: np.ndarray | torch.Tensor,
    k: int,
    *,
    backend: str = "auto",
    device: str = "auto",
    block_size: int | None = None,
    progress: Progress | None = None,
    rows: tuple[int, int] | None = None,
    recall: float = DEFAULT_RECALL,
    settings: ApproxSettings = ApproxSettings(),
    adapt: bool | None = None,
    agree: Callable[[Any], Any] | None = None,
    times: dict[str, float] | None = None,
) -> Searched:
    """:func:`knn`, with how it searched (:class:`Searched`).

    An approximate backend chosen by ``auto`` is tuned until its recall@k on a sample reaches
    ``recall`` (:mod:`reidctl.search.tuning`), or replaced by exact search when that cannot be done
    in less time than exact search would take. An approximate backend named by the caller keeps
    ``settings`` (``adapt=True`` tunes it too; None: tune when ``backend`` is ``auto``). Either
    way, a search of all rows is probed (:func:`probe_recall`, seeded) and a
    probe below ``recall`` gives a note; ``recall=0`` neither tunes nor probes. ``agree`` (under
    ``torchrun``: rank 0's value to every rank) makes the ranks' tuning decisions one.
    """
    x = torch.as_tensor(feats)
    check_normalised(x)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ReidctlError(f"k must be between 1 and the number of samples ({n}), got {k}")
    if not 0 <= recall <= 1:
        raise ReidctlError(f"--knn-recall {recall}: must lie in [0, 1] (0: no probe)")
    lo, hi = rows or (0, n)
    chosen, _ = choose_backend(n, x.shape[1], backend, device)
    if chosen not in APPROX_BACKENDS:
        return Searched(*_exact_knn(x, k, chosen, device, block_size, progress, (lo, hi), rows is None), chosen)
    dev = resolve_device(device)
    target = RecallTarget(recall=recall, adapt=backend == "auto" if adapt is None else adapt)
    tuned = None
    if target.adapt and recall > 0:
        tuned = tune(x, k, chosen, settings, target, dev, times)
        if agree is not None:
            tuned = agreed(tuned, agree((tuned.settings, tuned.index is None)), x, chosen, dev)
        if tuned.index is None:
            exact = exact_backend(dev)
            dist, idx = _exact_knn(x, k, exact, device, block_size, progress, (lo, hi), rows is None)
            return Searched(dist, idx, exact, tuning=tuned, note=tuned.reason, warn=True)
        index, settings = tuned.index, tuned.settings
    else:
        index = build_index(x, chosen, settings, dev, times)
    dist, idx = index.search(np.arange(lo, hi), k, settings, progress)
    if rows is not None or recall == 0:
        return Searched(dist, idx, chosen, settings, tuning=tuned)
    probe, note = recall_report(x, idx, k, recall, chosen, settings, str(dev))
    return Searched(dist, idx, chosen, settings, probe, tuned, note, warn=probe.recall < recall)


def recall_report(x: np.ndarray | torch.Tensor, idx: np.ndarray, k: int, recall: float, backend: str,
                  settings: ApproxSettings, device: str = "cpu") -> tuple[RecallProbe, str]:
    """The probe of the lists ``idx`` of all rows (the search's own lists: under ``torchrun``, after
    the ranks gathered them), and the sentence that tells it: a warning when it stays below
    ``recall``."""
    probe = probe_recall(x, idx, k, device=device)
    measured = (f"{backend} found recall@{k} {probe.recall:.3f} on {probe.rows:,} sampled rows against exact search "
                f"(identical lists on {probe.identical:.0%})")
    if probe.recall >= recall:
        return probe, f"{measured}, at or above --knn-recall {recall:g}"
    return probe, (f"{measured}, below --knn-recall {recall:g} (pca dim {settings.pca_dim or 'none'}, efSearch "
                   f"{settings.ef_search}, nprobe {settings.nprobe}): the clusters may differ from exact search's; "
                   "--knn-backend auto tunes the settings, --knn-backend torch searches exactly")


def _exact_knn(x: torch.Tensor, k: int, backend: str, device: str, block_size: int | None,
               progress: Progress | None, rows: tuple[int, int], whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """The exact search of rows ``rows`` with ``torch`` or ``faiss``."""
    lo, hi = rows
    if backend == "faiss":
        dist, idx = knn_faiss(x, k, device, lo, hi)
        if progress:
            progress(hi - lo, hi - lo)
        return tie_order(dist, idx)
    queries = x if whole else x[lo:hi]  # ``x`` itself: search_blocks moves it to the device once
    return search_blocks(queries, x, k, resolve_device(device), block_size, progress)
