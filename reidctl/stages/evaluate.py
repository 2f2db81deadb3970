"""The `evaluate` stage: ranking metrics of a features file or of a checkpoint on a dataset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reidctl.artifacts import SHEET, check_output, read_features, read_ground_truth
from reidctl.data.datasets import load_dataset
from reidctl.errors import ReidctlError
from reidctl.evaluation.metrics import (
    count_valid_queries,
    evaluate_features,
    protocol_masks,
)
from reidctl.evaluation.ranking import Ranking, RankSide, rank_gallery
from reidctl.evaluation.sheet import draw_sheet
from reidctl.models.spec import ModelSpec
from reidctl.progress import callback, progress_bar
from reidctl.runtime import Runtime
from reidctl.stages.extract import extract_split
from reidctl.stages.rank import (
    features_model,
    match_tile,
    sheet_rows,
    source_files,
    under_each,
)
from reidctl.stages.summary import StageSummary

AP_CHOICES = ("sklearn", "trapezoid")
PAIRS_CHOICES = ("market", "cross-camera", "same-camera")


def _check(ap: str, pairs: str) -> None:
    if ap not in AP_CHOICES:
        raise ReidctlError(f"--ap {ap}: choose sklearn (CC family) or trapezoid (MAR, Market MATLAB script)")
    if pairs not in PAIRS_CHOICES:
        raise ReidctlError(f"--pairs {pairs}: choose one of {', '.join(PAIRS_CHOICES)}")


@dataclass(frozen=True)
class EvalSummary(StageSummary):
    """What ``evaluate`` measured: ``mAP`` with the chosen AP convention and ``also`` the other
    one (``mAP_sklearn`` or ``mAP_trapezoid``), rank-1/5/10 and mINP (fractions), the queries
    (and how many could be scored) and gallery items, the settings it ran with (``ap``,
    ``rerank``, ``pairs``), the worst-queries sheet it drew, and how a fresh model started
    (``init``, when it extracted with one)."""

    mAP: float
    also: dict[str, float]
    rank1: float
    rank5: float
    rank10: float
    mINP: float
    queries: int
    valid_queries: int
    gallery: int
    settings: dict[str, Any]
    sheet: dict[str, Any] | None = None
    init: str | None = None

    def to_json(self) -> dict[str, Any]:
        record = {"mAP": self.mAP, **self.also, "rank1": self.rank1, "rank5": self.rank5, "rank10": self.rank10,
                  "mINP": self.mINP, "queries": self.queries, "valid_queries": self.valid_queries,
                  "gallery": self.gallery, **self.settings}
        return {**record, **{k: v for k, v in (("sheet", self.sheet), ("init", self.init)) if v is not None}}


def summarise(result: dict[str, Any], n_query: int, n_gallery: int, **settings: Any) -> EvalSummary:
    """evaluate_features' result as the stage's summary: ``mAP`` with the chosen AP convention and
    ``mAP_<other>`` with the other one (sklearn, trapezoid)."""
    cmc = np.asarray(result["cmc"])
    rank = [float(cmc[k - 1]) if len(cmc) >= k else float("nan") for k in (1, 5, 10)]
    also = {k: float(v) for k, v in result.items() if k.startswith("mAP_")}
    return EvalSummary(float(result["mAP"]), also, *rank, float(result["mINP"]), n_query,
                       int(result.get("num_valid_queries", n_query)), n_gallery, settings)


@dataclass
class WorstSheet:
    """``evaluate --sheet``: draw the ``queries`` queries with the lowest AP, ``top_k`` matches each."""

    out: Path
    queries: int = 10
    top_k: int = 10
    force: bool = False  # replace an existing file that is not a reidctl sheet

    def __post_init__(self) -> None:  # refused before any feature is extracted or evaluated
        if self.queries < 1 or self.top_k < 1:
            raise ReidctlError("--queries and --top-k must be at least 1")

    def check(self, *inputs: str | Path | None) -> None:
        """Refuse, before any work, a sheet that would overwrite one of ``inputs`` (the features
        file, the checkpoint, the weights, an image of the dataset folder) or, without ``force``,
        an existing file that is not a reidctl sheet."""
        check_output(self.out, schema=SHEET, inputs=inputs, force=self.force, flag="--sheet")


def evaluate_arrays(feats: np.ndarray, pids: np.ndarray, camids: np.ndarray, split: list[str], *,
                    ap: str = "sklearn", rerank: bool = False, pairs: str = "market", source: str = "",
                    files: list[Path] | None = None, sheet: WorstSheet | None = None,
                    model: str = "") -> EvalSummary:
    """Evaluate the query rows against the gallery rows of one feature matrix; with ``sheet``,
    also draw the worst queries' rankings from the image ``files`` of the rows (``model``: the
    words its title names the model by)."""
    _check(ap, pairs)
    split_arr = np.asarray(split)
    q, g = np.flatnonzero(split_arr == "query"), np.flatnonzero(split_arr == "gallery")
    if len(q) == 0 or len(g) == 0:
        raise ReidctlError(f"{source}: needs query and gallery rows to evaluate "
                           "(extract with --split test or --split all)")
    if pids is None or np.any(pids[q] < 0):
        raise ReidctlError(f"{source}: evaluation needs the identities of every query image, and some are unknown")
    if count_valid_queries(pids[q], camids[q], pids[g], camids[g], pairs) == 0:
        cams = {int(c) for c in np.concatenate([camids[q], camids[g]]) if c >= 0}
        why = ("all its query and gallery images come from one camera, and the protocol does not count "
               "same-camera matches" if pairs != "same-camera" and len(cams) <= 1
               else "no query identity has a gallery image it may be matched with")
        raise ReidctlError(f"{source}: none of its {len(q)} queries can be evaluated with --pairs {pairs}: {why}")
    other = next(k for k in AP_CHOICES if k != ap)  # reported beside it, from the same ranking
    with progress_bar("evaluate", len(q), unit="queries") as advance:
        result = evaluate_features(feats[q], feats[g], pids[q], pids[g], camids[q], camids[g], ap=ap, rerank=rerank,
                                   pairs=pairs, also=(other,), per_query=sheet is not None, progress=callback(advance))
    summary = summarise(result, len(q), len(g), ap=ap, rerank=rerank, pairs=pairs)
    if sheet is not None:
        sides = [RankSide(feats[r], [f"row {i}" for i in r], None if files is None else [files[i] for i in r],
                          camids[r], pids[r], source) for r in (q, g)]
        drawn = draw_worst(*sides, result["ap_per_query"], sheet, pairs=pairs, rerank=rerank, ap=ap, model=model)
        summary = dataclasses.replace(summary, sheet=drawn)
    return summary


def draw_worst(query: RankSide, gallery: RankSide, ap_per_query: np.ndarray, sheet: WorstSheet, *,
               pairs: str = "market", rerank: bool = False, ap: str = "sklearn", model: str = "") -> dict[str, Any]:
    """Draw the queries with the lowest AP (ties by query order) and their top matches, ranked
    as the protocol ranks them (``pairs``: the gallery items it ignores are left out), then each
    query's first right match with its rank: a bad AP says little until one sees how far down
    the right person went."""
    scored = np.flatnonzero(~np.isnan(ap_per_query))
    worst = scored[np.argsort(ap_per_query[scored], kind="stable")[: sheet.queries]]
    ranking = _protocol_ranking(query, gallery, worst, pairs, rerank)
    rows = sheet_rows(ranking, np.arange(len(worst)), [f"AP {100 * ap_per_query[i]:.1f} %" for i in worst],
                      columns=sheet.top_k)
    match = ranking.matches()
    first = first_right(match)
    for qi, (row, j) in enumerate(zip(rows, first)):
        row.first_right = None if j is None else match_tile(ranking, match, qi, j)
    how = f"{ap} AP, --pairs {pairs}" + (", re-ranked" if rerank else "")
    title = [f"reidctl evaluate: the {len(worst)} queries with the lowest AP ({how}), their top {sheet.top_k} as the "
             "protocol ranks them, then their first right match" + (f"; model: {model}" if model else "")
             + f"; from {query.source}", under_each(rerank)]
    layout = draw_sheet(rows, sheet.out, title)
    return {"out": str(sheet.out), "queries": [int(i) for i in worst],
            "ap": [float(ap_per_query[i]) for i in worst],
            "first_right_rank": [None if j is None else j + 1 for j in first], "size": list(layout.size)}


def _protocol_ranking(query: RankSide, gallery: RankSide, worst: np.ndarray, pairs: str, rerank: bool) -> Ranking:
    """The whole gallery ranked for the ``worst`` queries (in that order) as the protocol ranks it,
    to find each one's first right match, however far down."""
    def ignored(s: int, e: int) -> torch.Tensor:
        rows = worst[s:e] if not rerank else np.arange(s, e)
        valid, _ = protocol_masks(query.pids[rows], query.camids[rows], gallery.pids, gallery.camids, pairs)
        return torch.from_numpy(~valid)

    if rerank:  # re-ranked distances depend on every query: rank them all, keep the worst (not Q×G)
        full = rank_gallery(query, gallery, len(gallery), rerank=True, same_image=True, exclude=ignored)
        return Ranking(query.subset(worst), gallery, full.dist[worst], full.idx[worst], rerank=True)
    return rank_gallery(query.subset(worst), gallery, len(gallery), same_image=True, exclude=ignored)


def first_right(match: np.ndarray) -> list[int | None]:
    """The 0-based rank of the first right match in each row of a ``Ranking.matches()`` array
    (None: no right match ranked)."""
    return [int(np.argmax(m == 1)) if np.any(m == 1) else None for m in match]


def evaluate_feature_file(path: str | Path, *, ap: str = "sklearn", rerank: bool = False,
                          pairs: str = "market", sheet: WorstSheet | None = None) -> EvalSummary:
    if sheet is not None:
        sheet.check(path)
    feats = read_features(path)
    pids = read_ground_truth(path)
    return evaluate_arrays(feats.feats, pids, feats.camids, feats.split, ap=ap, rerank=rerank, pairs=pairs,
                           source=str(path), files=source_files(feats), sheet=sheet, model=features_model(feats))


def evaluate_model(spec: ModelSpec, data: str, dataset: str | None = None, *, ap: str = "sklearn",
                   rerank: bool = False, pairs: str = "market", runtime: Runtime = Runtime(),
                   sheet: WorstSheet | None = None) -> EvalSummary:
    """Extract query + gallery in memory with the model of ``spec`` and evaluate.

    Without a checkpoint the model is a fresh one, started as every other command starts it
    (ImageNet unless ``--weights`` or ``--pretrained none``); the result's ``init`` says which."""
    _check(ap, pairs)
    if sheet is not None:
        sheet.check(data, spec.checkpoint, spec.weights)
    ds = load_dataset(data, dataset)
    model, provenance = spec.build(runtime.seed)
    ext, rows = extract_split(model, ds, "test", batch_size=runtime.extract_batch_size, workers=runtime.workers,
                              device=runtime.device, amp=runtime.amp)
    pids = np.array([s.pid for s in rows])
    camids = np.array([s.camid for s in rows])
    result = evaluate_arrays(ext.feats, pids, camids, ds.split_of("test"), ap=ap, rerank=rerank, pairs=pairs,
                             source=str(data), files=[s.path for s in rows], sheet=sheet,
                             model=_spec_words(spec, provenance))
    return dataclasses.replace(result, init=provenance["init"])


def _spec_words(spec: ModelSpec, provenance: dict[str, Any]) -> str:
    """The model ``evaluate --checkpoint``/``--weights`` ran, as the worst-queries sheet names it."""
    if spec.checkpoint is not None:
        return f"checkpoint {spec.checkpoint}"
    return f"{spec.arch}, {provenance.get('init') or 'fresh'}"
