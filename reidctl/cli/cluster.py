"""`reidctl cluster`: features.h5 → labels.h5."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from reidctl.cli import options as o
from reidctl.cli.common import (app, multi_camera_cell, out_console, print_json, print_quality, user_errors,
                                warn_single_camera)
from reidctl.cluster.stage import ClusterParams, run_cluster


@app.command("cluster")
@user_errors
def cluster(
    features: Annotated[Path, typer.Argument(help="Features file (reidctl extract).")],
    out: Annotated[Path, typer.Option("--out", help="Labels file to write (HDF5).")],
    algo: Annotated[str, typer.Option("--algo", help="dbscan (CC family) or agglomerative (average linkage).")] = "dbscan",
    k1: Annotated[int, typer.Option("--k1", help="Neighbourhood size of the k-reciprocal Jaccard distance.")] = 30,
    k2: Annotated[int, typer.Option("--k2", help="Query-expansion size (1 = none).")] = 6,
    eps: Annotated[float, typer.Option("--eps", help="DBSCAN radius on the Jaccard distance.")] = 0.6,
    min_samples: Annotated[int, typer.Option("--min-samples", help="DBSCAN core-point size (counts the point itself).")] = 4,
    n_clusters: Annotated[Optional[int], typer.Option("--n-clusters", help="Number of clusters for agglomerative.")] = None,
    jaccard_variant: Annotated[str, typer.Option("--jaccard-variant", help="cc (k1 columns incl. self, the default) or original (Zhong et al., k1+1).")] = "cc",
    knn_backend: Annotated[str, typer.Option("--knn-backend", help="auto, torch or faiss (faiss-gpu).")] = "auto",
    device: o.Device = "auto",
    seed: o.Seed = 1,
    force: o.Force = False,
    json: o.Json = False,
) -> None:
    """Cluster features into pseudo identities on the k-reciprocal Jaccard distance."""
    params = ClusterParams(algo=algo, k1=k1, k2=k2, eps=eps, min_samples=min_samples, n_clusters=n_clusters,
                           jaccard_variant=jaccard_variant, knn_backend=knn_backend, device=device)
    summary = run_cluster(features, out, params, seed=seed, force=force)
    if json:
        print_json(summary)
        return
    table = Table(title=f"{out}", title_justify="left")
    for col in ("rows", "clusters", "outliers", "multi-camera", "kNN s", "Jaccard s", "cluster s"):
        table.add_column(col, justify="right")
    table.add_row(*(str(summary[k]) for k in ("rows", "clusters", "outliers")), multi_camera_cell(summary),
                  *(str(summary[k]) for k in ("knn_s", "jaccard_s", "cluster_s")))
    out_console.print(table)
    warn_single_camera(summary)
    if "quality" in summary:
        print_quality(summary["quality"])
