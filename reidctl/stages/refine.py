"""The `refine` stage: features (+ clustering labels) → refined pseudo labels, by method.

Every method can start from a features file alone: without a labels file the method's own
default clustering runs first (its official command's settings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from reidctl.artifacts import (
    LABELS,
    check_output,
    read_features,
    read_ground_truth,
    read_labels,
    write_labels,
)
from reidctl.cluster.algorithms import distance_names
from reidctl.cluster.clustering import cluster_features, size_choices
from reidctl.cluster.quality import pair_precision
from reidctl.cluster.report import labels_report
from reidctl.errors import ReidctlError, naming
from reidctl.methods import get_method
from reidctl.methods.plan import sized_clustering
from reidctl.stages.summary import StageSummary


@dataclass(frozen=True)
class RefineSummary(StageSummary):
    """What ``refine`` did: the method and rows, what the clustering chose for the data's size
    (``search``, when this stage clustered), the method's own figures (``figures``: icrefine's
    discarded rows, NCPLR's neighbour pairs, MAR's agreement pairs ...), the refined labels'
    report, and the precision of the pairs the method claims show one person (where ground truth
    is known)."""

    method: str
    rows: int
    search: dict[str, Any]
    figures: dict[str, Any]
    labels: dict[str, Any]
    pair_quality: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        record = {"method": self.method, "rows": self.rows, **self.search, **self.figures, **self.labels}
        return record if self.pair_quality is None else {**record, "pair_quality": self.pair_quality}


def run_refine(
    method: str,
    features_path: str | Path,
    out: str | Path,
    *,
    labels_path: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    seed: int = 1,
    force: bool = False,
    borrow: bool = False,
) -> RefineSummary:
    """Refine the labels of ``labels_path`` (or of the method's default clustering) and write ``out``
    (never over one of its inputs, nor over a file other than a labels artifact unless ``force``).

    ``options``: the flat options of the ``refine`` command, resolved into the method's plan
    (:func:`reidctl.methods.plan.make_plan`, ``stage="refine"``): its switches, the clustering
    (when no ``labels_path`` is given) and the method's refine options.

    With ``borrow`` (a `loop` epoch folder, which keeps, prunes and re-makes the two files
    together) and ``out`` beside ``labels_path``, the arrays the method leaves unchanged (for
    ``cc`` all of them) are not copied: ``out`` records their digests and is read through them
    (:func:`reidctl.artifacts.write_labels`). Without it the file stands alone, so that a later
    ``cluster --out labels.h5`` cannot leave it dangling."""
    method_cls = get_method(method)
    plan = method_cls.plan(options or {}, stage="refine")  # every bad option fails before any work
    fed = [plan.refine.get(p.feeds) for p in method_cls.preludes]  # files the method reads as options
    check_output(out, schema=LABELS, inputs=(features_path, labels_path, *fed), force=force)
    fe = read_features(features_path)
    inputs = {"features": fe.meta.digest}
    searched: dict[str, Any] = {}  # the kNN backend, when this stage clusters
    given = None  # the labels file read, whose unchanged arrays the output borrows instead of copying
    if not method_cls.clusters:
        if labels_path is not None:
            raise ReidctlError(f"--method {method} does not cluster: --labels does not apply")
        labels, extra, cluster_info = np.full(len(fe), -1, dtype=np.int64), {}, {"labels": "none"}
    elif labels_path is not None:
        if plan.cluster_given:
            raise ReidctlError("clustering options apply only without --labels (the labels are already clustered)")
        given = read_labels(labels_path, expect_paths=fe.paths)
        labels, extra, cluster_info = given.labels, given.extra, {"labels": "given"}
        inputs["labels"] = given.meta.digest
    else:
        params = sized_clustering(method_cls, plan.cluster, len(fe))
        res = cluster_features(fe.feats, params, parts=fe.parts)
        labels = res["labels"]
        extra = {k: res[k] for k in ("knn_index", "knn_dist", res["distance"])}
        cluster_info = {"cluster": dataclasses.asdict(params)}
        searched = size_choices(res)
    try:  # the options were checked above: what fails now is about the features' content
        refined = method_cls.refine(fe, labels, extra, plan.refine, seed=seed)
    except ReidctlError as exc:
        raise naming(features_path, exc) from None
    new_labels = np.asarray(refined.labels, dtype=np.int32)
    truth = read_ground_truth(features_path)
    summary = RefineSummary(method, len(new_labels), searched, dict(refined.summary),
                            labels_report(new_labels, fe.camids, truth),
                            pair_precision(refined.pairs, truth) if refined.pairs is not None and truth is not None
                            else None)
    kept = {k: v for k, v in extra.items() if k in ("knn_index", "knn_dist", *distance_names())}
    write_labels(
        out, new_labels, paths=fe.paths, extra={**kept, **refined.extra},
        params={"stage": "refine", "method": method, **cluster_info, "options": refined.options},
        inputs=inputs, seed=seed, attrs={"summary": summary.to_json(), **refined.attrs,
                                         "sources": {"features": str(features_path), "labels": str(labels_path)}},
        borrow_from=given if borrow else None,
    )
    return summary
