"""The `cluster` stage: features.h5 → labels.h5 (the labels, the kNN lists and the sparse
distance they were clustered on, and the label quality where the file keeps identities)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from reidctl.artifacts import LABELS, check_output, read_features, read_ground_truth, write_labels
from reidctl.cluster.clustering import ClusterParams, cluster_features, size_choices
from reidctl.cluster.report import labels_report
from reidctl.errors import ReidctlError, naming
from reidctl.runtime import dist as ddp
from reidctl.runtime.device import resolve_device


def run_cluster(features_path: str | Path, out: str | Path, params: ClusterParams, *, seed: int = 1,
                force: bool = False) -> dict[str, Any]:
    """Cluster a features file's rows and write a labels artifact (with label quality when pids exist).

    ``out`` must not be the features file, nor an existing file other than a labels artifact
    unless ``force``."""
    params.check()
    check_output(out, schema=LABELS, inputs=(features_path,), force=force)
    fe = read_features(features_path)
    with ddp.distributed(resolve_device(params.device)) as device:
        try:
            res = cluster_features(fe.feats, replace(params, device=str(device)), parts=fe.parts)
        except ReidctlError as exc:
            raise naming(features_path, exc) from None
        world = ddp.world_size()
    if res is None:
        return {"rank": ddp.env_rank(), "world_size": world}
    labels = res["labels"]
    summary: dict[str, Any] = {"rows": len(labels), **{k: round(v, 3) for k, v in res["times"].items()},
                               **size_choices(res), "world_size": world,
                               **labels_report(labels, fe.camids, read_ground_truth(features_path))}
    write_labels(
        out, labels, paths=fe.paths,
        extra={"knn_index": res["knn_index"], "knn_dist": res["knn_dist"], res["distance"]: res[res["distance"]]},
        params={"stage": "cluster", **asdict(params), **params.algorithm.seed}, inputs={"features": fe.meta.digest},
        seed=seed, attrs={"summary": summary},
    )
    return summary
