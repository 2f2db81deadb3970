"""icrefine's options, declared once for `refine` and `loop` (defaults live in
:class:`~reidctl.methods.icrefine.method.IcrefineOptions` and ``IntraCameraParams``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from reidctl.methods.icrefine.method import DEFAULT_GLOBAL_CLUSTERS
from reidctl.methods.icrefine.method import IcrefineOptions as R

Decay = Annotated[Optional[str], typer.Option(
    "--decay", help="icrefine: discard probability p(e) at epoch e of E: none (p = 1, the released code), "
    f"linear 1−e/(4E), exponential 0.75^(e/E), cosine ½(1+cos(πe/(3E))) ({R.decay}).")]
InfoNodes = Annotated[Optional[str], typer.Option(
    "--info-nodes", help="icrefine: information nodes: per-cluster (one per Infomap cluster, the code) or all "
    f"(every image scoring above the mean, the paper) ({R.info_nodes}).")]
NClusters = Annotated[Optional[int], typer.Option(
    "--n-clusters", help=f"Clusters of average-linkage clustering (icrefine: {DEFAULT_GLOBAL_CLUSTERS}, the "
    "paper's Market value, or N/5 when smaller; MSMT17: 1200).")]
GlobalClustering = Annotated[Optional[str], typer.Option(
    "--global-clustering", help="Global clustering: agglomerative (average linkage, icrefine's default) or "
    "dbscan (the other methods' default).")]
IntraClusters = Annotated[Optional[str], typer.Option(
    "--intra-clusters", help=f"icrefine: clusters per camera, images/D or a fixed number ({R.intra_clusters}).")]


def icrefine_cluster(n_clusters: int | None, global_clustering: str | None) -> dict[str, Any]:
    """The given global-clustering options as ``ClusterParams`` overrides."""
    values = {"n_clusters": n_clusters, "algo": global_clustering}
    return {k: v for k, v in values.items() if v is not None}


def icrefine_refine(*, decay: str | None, info_nodes: str | None, intra: Path | None = None,
                    intra_clusters: str | None = None, epoch: int | None = None,
                    epochs: int | None = None) -> dict[str, Any]:
    """The given refine options (only those set, so that another method refuses them by name)."""
    values = {"decay": decay, "info_nodes": info_nodes, "intra": None if intra is None else str(intra),
              "intra_clusters": intra_clusters, "epoch": epoch, "epochs": epochs}
    return {k: v for k, v in values.items() if v is not None}
