"""`reidctl cluster`: features.h5 → labels.h5."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from reidctl.cli.common import (command, multi_camera_cell, notice, out_console, print_json, print_quality,
                                warn_about_labels)
from reidctl.cli.method_options import cluster_flags, runtime_flags
from reidctl.cluster.clustering import ClusterParams
from reidctl.stages.cluster import run_cluster
from reidctl.options import resolve
from reidctl.pipeline.rundir import summary_notes


@command("cluster", run=runtime_flags("device", "seed", "force", "json", "quiet"), options=cluster_flags())
def cluster(
    features: Annotated[Path, typer.Argument(metavar="FEATURES", help="Features file (reidctl extract).")],
    out: Annotated[Path, typer.Option("--out", help="Labels file to write (HDF5).")],
    options: dict = None,  # ClusterParams (reidctl.cli.method_options)
    run: dict = None,  # how it runs (reidctl.runtime.Runtime, reidctl.cli.options.CommandOptions)
) -> None:
    """Cluster features into pseudo identities on the k-reciprocal Jaccard distance."""
    params = resolve(ClusterParams, {**options, "device": run["device"]}, what="`cluster`")
    result = run_cluster(features, out, params, seed=run["seed"], force=run["force"])
    if result.rank != 0:
        return  # under torchrun rank 0 alone reports
    summary = result.to_json()
    if run["json"]:
        print_json(summary)
        return
    for note in summary_notes(summary):
        notice(note)
    table = Table(title=f"{out}", title_justify="left")
    for col in ("rows", "clusters", "outliers", "multi-camera", "kNN s", "Jaccard s", "cluster s"):
        table.add_column(col, justify="right")
    table.add_row(*(str(summary[k]) for k in ("rows", "clusters", "outliers")), multi_camera_cell(summary),
                  *(str(summary[k]) for k in ("knn_s", "jaccard_s", "cluster_s")))
    out_console.print(table)
    warn_about_labels(summary)
    if "quality" in summary:
        print_quality(summary["quality"])
