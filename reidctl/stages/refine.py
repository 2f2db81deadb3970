"""The `refine` stage: features (+ clustering labels) → refined pseudo labels, by method.

Every method can start from a features file alone: without a labels file the method's own
default clustering runs first (its official command's settings).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from reidctl.artifacts import LABELS, check_output, read_features, read_ground_truth, read_labels, write_labels
from reidctl.cluster.algorithms import distance_names
from reidctl.cluster.quality import pair_precision
from reidctl.cluster.report import labels_report
from reidctl.cluster.clustering import size_choices, cluster_features
from reidctl.errors import ReidctlError, naming
from reidctl.methods import get_method
from reidctl.methods.plan import cluster_params


def run_refine(
    method: str,
    features_path: str | Path,
    out: str | Path,
    *,
    labels_path: str | Path | None = None,
    cluster: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    seed: int = 1,
    force: bool = False,
    borrow: bool = False,
) -> dict[str, Any]:
    """Refine the labels of ``labels_path`` (or of the method's default clustering) and write ``out``
    (never over one of its inputs, nor over a file other than a labels artifact unless ``force``).

    With ``borrow`` (a `loop` epoch folder, which keeps, prunes and re-makes the two files
    together) and ``out`` beside ``labels_path``, the arrays the method leaves unchanged (for
    ``cc`` all of them) are not copied: ``out`` records their digests and is read through them
    (:func:`reidctl.artifacts.write_labels`). Without it the file stands alone, so that a later
    ``cluster --out labels.h5`` cannot leave it dangling."""
    method_cls = get_method(method)
    method_cls.refine_options(options or {})  # another method's options fail before any work
    fed = [(options or {}).get(p.feeds) for p in method_cls.preludes]  # files the method reads as options
    check_output(out, schema=LABELS, inputs=(features_path, labels_path, *fed), force=force)
    fe = read_features(features_path)
    inputs = {"features": fe.meta.digest}
    searched: dict[str, Any] = {}  # the kNN backend, when this stage clusters
    given = None  # the labels file read, whose unchanged arrays the output borrows instead of copying
    if not method_cls.clusters:
        if labels_path is not None or cluster:
            raise ReidctlError(f"--method {method} does not cluster: --labels and clustering options do not apply")
        labels, extra, cluster_info = np.full(len(fe), -1, dtype=np.int64), {}, {"labels": "none"}
    elif labels_path is not None:
        if cluster:
            raise ReidctlError("clustering options apply only without --labels (the labels are already clustered)")
        given = read_labels(labels_path, expect_paths=fe.paths)
        labels, extra, cluster_info = given.labels, given.extra, {"labels": "given"}
        inputs["labels"] = given.meta.digest
    else:
        params = cluster_params(method_cls, options, n_samples=len(fe), **(cluster or {}))
        res = cluster_features(fe.feats, params, parts=fe.parts)
        labels = res["labels"]
        extra = {k: res[k] for k in ("knn_index", "knn_dist", res["distance"])}
        cluster_info = {"cluster": dataclasses.asdict(params)}
        searched = size_choices(res)
    try:  # the options were checked above: what fails now is about the features' content
        refined = method_cls.refine(fe, labels, extra, dict(options or {}), seed=seed)
    except ReidctlError as exc:
        raise naming(features_path, exc) from None
    new_labels = np.asarray(refined.labels, dtype=np.int32)
    truth = read_ground_truth(features_path)
    summary: dict[str, Any] = {"method": method, "rows": len(new_labels), **searched, **refined.summary,
                               **labels_report(new_labels, fe.camids, truth)}
    if refined.pairs is not None and truth is not None:
        summary["pair_quality"] = pair_precision(refined.pairs, truth)
    kept = {k: v for k, v in extra.items() if k in ("knn_index", "knn_dist", *distance_names())}
    write_labels(
        out, new_labels, paths=fe.paths, extra={**kept, **refined.extra},
        params={"stage": "refine", "method": method, **cluster_info, "options": refined.options},
        inputs=inputs, seed=seed, attrs={"summary": summary, **refined.attrs,
                                         "sources": {"features": str(features_path), "labels": str(labels_path)}},
        borrow_from=given if borrow else None,
    )
    return summary
