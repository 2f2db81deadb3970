"""Settings of an approximate kNN search that reach a recall target on the user's own features, or
the decision to search exactly.

Why: the defaults of :class:`~reidctl.search.approx.ApproxSettings` were tuned on CNN features;
on features of another shape (a flat spectrum, another backbone, an early epoch) the same settings
lose most true neighbours (issue 30: recall@30 0.32). So ``--knn-backend auto`` measures before it
trusts. It searches a seeded sample of rows exactly (its cost: ``rows / N`` of the exact search,
which also times the exact search). For HNSW it then separates the two ways of losing neighbours:
what the PCA projection loses (the recall a perfect graph would give in the reduced space with 1,
2 and 4 times the candidates, by brute force there, cheap; the PCA dimension doubles, up to none,
until one reaches the target) from what the graph misses (trial searches of the sample on the
index, efSearch doubling while it gains, then a graph built with 4× the efConstruction). IVF widens the lists probed, then the PCA dimension. It
keeps the first settings whose sample recall reaches the target, and gives up and searches
exactly when the trials run out, or when what it has spent plus the predicted full search would
no longer beat the exact search's estimate.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from reidctl.search.approx import (
    ApproxIndex,
    ApproxSettings,
    build_index,
    candidate_count,
    exact_rerank,
    pca_reduce,
    principal_axes,
    walk_width,
)
from reidctl.search.probe import PROBE_ROWS, PROBE_SEED, exact_sample, found_per_row, sample_rows

#: The recall@k the approximate search must reach on the probe's sample (``--knn-recall``).
DEFAULT_RECALL = 0.98
#: Trial searches of the sample on an index at most. (HNSW's checks of a reduced space by brute
#: force, before its index is built, are bounded by the PCA ladder: three per dimension.)
MAX_ROUNDS = 12
#: HNSW's second graph on a reduced space is built with this many times the efConstruction.
GRAPH_GROWTH = 4
#: The share of exact search's estimated time the approximate search (tuning included) may spend.
#: Half: an approximate search that is not at least twice as fast is not worth its missed
#: neighbours, and a tuning that fails costs at most 1.5 times the exact search (it then searches
#: exactly).
BUDGET_SHARE = 0.5
#: Trial searches on one index before a larger PCA dimension: widening alone cannot recover
#: neighbours the reduced space ranks far down.
WIDEN_STEPS = 4
#: The reduced space must keep this much more recall than the target when the graph is perfect:
#: the graph search loses some (0.5-1 point at efSearch 384-768 on CNN-like features of 50k rows).
CEILING_MARGIN = 0.01
#: Widening the search-time settings that gains less recall than this moves on to a larger PCA
#: dimension: the reduced space, not the index, is losing the neighbours.
MIN_GAIN = 0.01


@dataclass(frozen=True)
class RecallTarget:
    """What an approximate search must reach: ``recall`` (0: no probe) on ``rows`` sampled rows;
    ``adapt``: tune the settings (``auto``) or keep them and only report (an explicit backend)."""

    recall: float = DEFAULT_RECALL
    adapt: bool = True
    rows: int = PROBE_ROWS
    seed: int = PROBE_SEED
    max_rounds: int = MAX_ROUNDS


@dataclass
class Tuned:
    """The outcome of :func:`tune`: the settings and their index, or ``index is None`` and the
    reason to search exactly; every trial (``rounds``) and the exact search's estimated seconds."""

    settings: ApproxSettings
    index: ApproxIndex | None
    sample_recall: float
    exact_estimate_s: float
    seconds: float
    rounds: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"settings": search_settings(self.settings), "sample_recall": round(self.sample_recall, 4),
                "exact_estimate_s": round(self.exact_estimate_s, 1), "seconds": round(self.seconds, 1),
                "rounds": self.rounds, "exact_fallback": self.index is None}


def search_settings(st: ApproxSettings) -> dict[str, Any]:
    """The settings the tuning may change, for the stage's summary."""
    return {"pca_dim": st.pca_dim, "ef_construction": st.ef_construction, "ef_search": st.ef_search,
            "candidates": st.candidates, "nprobe": st.nprobe}


def pca_ladder(first: int, d: int) -> list[int]:
    """PCA dimensions to try: ``first``, doubling while below ``d``, then none (0: all of ``d``)."""
    dims, p = [], first
    while 0 < p < d:
        dims.append(p)
        p *= 2
    return dims + [0]


def widen(st: ApproxSettings, backend: str, step: int, k: int) -> ApproxSettings:
    """The search-time settings of trial ``step`` (0: as given) on one index: IVF probes ``4^step``
    times the lists; HNSW walks its graph keeping ``2^step`` times the list it really keeps at
    step 0, ``max(efSearch, candidates × k)``: faiss's walk keeps at least the candidates asked
    for, so doubling an efSearch below that changed nothing, and the tuning took the equal
    recall for a widening that stopped paying (1M rows, 8 × k = 240 candidates: efSearch 96 and
    192 gave the same 0.730; bench/README.md, issue 30)."""
    if backend == "faiss-ivf":
        return dataclasses.replace(st, nprobe=st.nprobe * 4 ** step)
    if step == 0:
        return st
    return dataclasses.replace(st, ef_search=walk_width(st, k) * 2 ** step)


@dataclass
class _Trials:
    """The tuning's sample, its exact lists, its clock and its record."""

    x: torch.Tensor
    k: int
    picked: np.ndarray
    exact_dist: np.ndarray
    start: float
    exact_s: float
    rounds: list[dict[str, Any]] = field(default_factory=list)
    best: float = 0.0

    def recall(self, idx: np.ndarray) -> float:
        return float(found_per_row(self.x, self.picked, idx, self.exact_dist).mean() / self.k)

    def record(self, st: ApproxSettings, recall: float, **extra: Any) -> None:
        if not extra.get("ceiling"):  # the best a real search reached, not what a perfect graph would
            self.best = max(self.best, recall)
        self.rounds.append({**search_settings(st), "sample_recall": round(recall, 4), **extra})

    def searches(self) -> int:
        """Trial searches on an index so far (the rounds :attr:`RecallTarget.max_rounds` bounds)."""
        return sum(1 for r in self.rounds if not r.get("ceiling"))

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def tune(x: torch.Tensor, k: int, backend: str, settings: ApproxSettings, target: RecallTarget,
         device: torch.device, times: dict[str, float] | None = None) -> Tuned:
    """Settings of ``backend`` whose recall@k on a sample of ``target.rows`` rows reaches
    ``target.recall`` (the module's docstring says how), with their index; or no index and the
    reason to search exactly."""
    start = time.perf_counter()
    n, d = x.shape
    picked = sample_rows(n, target.rows, target.seed + 1)  # not the probe's sample: it reports on fresh rows
    exact_dist, _ = exact_sample(x, picked, k, str(device))
    trials = _Trials(x, k, picked, exact_dist, start, (time.perf_counter() - start) * n / len(picked))
    budget = BUDGET_SHARE * trials.exact_s

    def fallback(why: str, st: ApproxSettings) -> Tuned:
        return Tuned(st, None, trials.best, trials.exact_s, trials.elapsed(), trials.rounds,
                     _reason(backend, k, trials.best if trials.searches() else None, target, trials.exact_s, why))

    def out_of_time(st: ApproxSettings) -> Tuned | None:
        return fallback(f"its time so far passed {BUDGET_SHARE:g}× exact search's", st) if trials.elapsed() >= budget else None

    st = settings
    axes = None  # one decomposition for every dimension tried
    for pca in pca_ladder(settings.pca_dim, d):
        if trials.searches() >= target.max_rounds:
            break
        st = dataclasses.replace(settings, pca_dim=pca)
        if stop := out_of_time(st):
            return stop
        if pca and axes is None:
            axes = principal_axes(x, st)
        reduced = pca_reduce(x, st, axes)
        if stop := out_of_time(st):
            return stop
        if backend == "faiss-hnsw" and pca:  # (a full-dimensional graph re-ranks exact distances)
            found = _enough_candidates(trials, reduced, st, target, device)
            if found is None:
                continue  # even a perfect graph on this reduced space misses too many neighbours
            st = found
        for built in graphs(st, backend):
            if trials.searches() >= target.max_rounds:
                break
            index = build_index(x, backend, built, device, times, reduced=reduced)
            if stop := out_of_time(built):
                return stop
            if (done := _widen(trials, index, built, backend, target, budget, fallback)) is not None:
                return done
    return fallback(f"{trials.searches()} trial searches", st)


def graphs(st: ApproxSettings, backend: str) -> list[ApproxSettings]:
    """The indexes to try on one reduced space: HNSW's graph as set, then one built with
    :data:`GRAPH_GROWTH` times the efConstruction (a better graph reaches at efSearch 192 what the
    default one reaches at 384: bench/README.md, issue 30); IVF's lists as set."""
    if backend == "faiss-hnsw":
        return [st, dataclasses.replace(st, ef_construction=st.ef_construction * GRAPH_GROWTH)]
    return [st]


def _widen(trials: _Trials, index: ApproxIndex, st: ApproxSettings, backend: str, target: RecallTarget,
           budget: float, fallback: Any) -> Tuned | None:
    """Trial searches of the sample on ``index``, widening its search while that gains: the
    tuned settings when one reaches the target, the fallback when the predicted time passes the
    budget, None when widening stopped paying (or the trials ran out)."""
    n, k = trials.x.shape[0], trials.k
    previous = -1.0
    for step in range(WIDEN_STEPS):
        trial = widen(st, backend, step, k)
        t = time.perf_counter()
        _, idx = index.search(trials.picked, k, trial)
        predicted = trials.elapsed() + (time.perf_counter() - t) * n / len(trials.picked)
        recall = trials.recall(idx)
        trials.record(trial, recall, predicted_s=round(predicted, 1))
        if predicted >= budget:
            return fallback(f"its predicted time passes {BUDGET_SHARE:g}× exact search's", trial)
        if recall >= target.recall:
            return Tuned(trial, index, recall, trials.exact_s, trials.elapsed(), trials.rounds)
        if recall - previous < MIN_GAIN or trials.searches() >= target.max_rounds:
            return None
        previous = recall
    return None


def _enough_candidates(trials: _Trials, reduced: np.ndarray, st: ApproxSettings, target: RecallTarget,
                       device: torch.device) -> ApproxSettings | None:
    """``st`` with the fewest candidates (``candidates`` × 1, 2, 4) whose exact re-rank reaches the
    target on the sample when the reduced search is perfect (brute force in the reduced space:
    ``pca_dim / D`` of the exact probe's cost); None when none does. This separates what the
    projection loses (more candidates or dimensions help) from what the graph misses (efSearch)."""
    n, k = trials.x.shape[0], trials.k
    wider = [dataclasses.replace(st, candidates=factor * st.candidates) for factor in (1, 2, 4)]
    widths = [candidate_count(found, k, n) for found in wider]
    for found, (kc, idx) in zip(wider, perfect_graph_search(trials.x, reduced, trials.picked, k, widths, device)):
        ceiling = trials.recall(idx)
        trials.record(found, ceiling, ceiling=True)
        if ceiling >= target.recall + CEILING_MARGIN:
            return found
        if kc == n:
            break
    return None


def perfect_graph_search(x: torch.Tensor, reduced: np.ndarray, rows: np.ndarray, k: int, widths: list[int],
                         device: torch.device) -> Iterator[tuple[int, np.ndarray]]:
    """What a perfect graph on the reduced space finds: for each candidate count of ``widths``
    (ascending), that many nearest rows of each of ``rows`` by brute force in the reduced space,
    re-ranked exactly to ``k``, as ``(width, neighbours)``. One brute-force search serves every
    width, and a width is re-ranked only when asked for (the tuning stops at the first that passes;
    bench/knn_frontier.py measures them all)."""
    import faiss  # noqa: PLC0415 (the approximate backends need it; checked before)

    _, order = faiss.knn(np.ascontiguousarray(reduced[rows]), reduced, max(widths))
    for kc in widths:
        _, idx = exact_rerank(x, rows, np.ascontiguousarray(order[:, :kc], dtype=np.int64), k, device)
        yield kc, idx


def _reason(backend: str, k: int, best: float | None, target: RecallTarget, exact_s: float, why: str) -> str:
    """The fallback's sentence; ``best`` None when no trial search ran (the budget ran out first)."""
    reached = (f"reached recall@{k} {best:.3f} at best on {target.rows:,} sampled rows, below" if best is not None
               else "ran no trial search that could reach")
    return (f"--knn-backend auto: {backend} {reached} --knn-recall {target.recall:g} ({why}); searching exactly "
            f"(estimated {exact_s:.0f} s)")


def agreed(tuned: Tuned, chosen: tuple[ApproxSettings, bool], x: torch.Tensor, backend: str,
           device: torch.device) -> Tuned:
    """``tuned`` made to follow the settings and exact-or-not decision ``chosen`` of another
    process (rank 0 under ``torchrun``): the ranks search alike even when their trial searches
    differed (faiss builds its graph with threads, not always the same graph)."""
    settings, exact = chosen
    if exact:
        return dataclasses.replace(tuned, index=None, settings=settings)
    built = (tuned.settings.pca_dim, tuned.settings.ef_construction, tuned.settings.hnsw_m)
    if tuned.index is None or built != (settings.pca_dim, settings.ef_construction, settings.hnsw_m):
        tuned = dataclasses.replace(tuned, index=build_index(x, backend, settings, device))
    return dataclasses.replace(tuned, settings=settings, reason=None)

