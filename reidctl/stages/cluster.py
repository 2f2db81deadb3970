"""The `cluster` stage: features.h5 → labels.h5 (the labels, the kNN lists and the sparse
distance they were clustered on, and the label quality where the file keeps identities)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from reidctl.artifacts import (
    LABELS,
    check_output,
    read_features,
    read_ground_truth,
    write_labels,
)
from reidctl.cluster.clustering import ClusterParams, cluster_features, size_choices
from reidctl.cluster.report import labels_report
from reidctl.errors import ReidctlError, naming
from reidctl.runtime import dist as ddp
from reidctl.runtime.device import resolve_device
from reidctl.stages.summary import StageSummary


@dataclass(frozen=True)
class ClusterSummary(StageSummary):
    """What ``cluster`` did: the rows, each step's seconds (``knn_s``, ``jaccard_s``,
    ``cluster_s`` ...), what it chose for the data's size (``search``: the kNN backend, the
    Jaccard bound and why), the processes it ran on, and the labels' report (clusters, outliers,
    cameras, and quality against ground truth where known: :func:`reidctl.cluster.report.labels_report`).
    Under ``torchrun`` the ranks but 0 write nothing and report only their ``rank``."""

    rows: int
    times: dict[str, float]
    search: dict[str, Any]
    world_size: int
    labels: dict[str, Any]
    rank: int = 0

    def to_json(self) -> dict[str, Any]:
        if self.rank:
            return {"rank": self.rank, "world_size": self.world_size}
        return {"rows": self.rows, **self.times, **self.search, "world_size": self.world_size, **self.labels}


def run_cluster(features_path: str | Path, out: str | Path, params: ClusterParams, *, seed: int = 1,
                force: bool = False) -> ClusterSummary:
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
        return ClusterSummary(0, {}, {}, world, {}, rank=ddp.env_rank())
    labels = res["labels"]
    summary = ClusterSummary(len(labels), {k: round(v, 3) for k, v in res["times"].items()}, size_choices(res), world,
                             labels_report(labels, fe.camids, read_ground_truth(features_path)))
    write_labels(
        out, labels, paths=fe.paths,
        extra={"knn_index": res["knn_index"], "knn_dist": res["knn_dist"], res["distance"]: res[res["distance"]]},
        params={"stage": "cluster", **asdict(params), **params.algorithm.seed}, inputs={"features": fe.meta.digest},
        seed=seed, attrs={"summary": summary.to_json()},
    )
    return summary
