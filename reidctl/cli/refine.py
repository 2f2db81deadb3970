"""`reidctl refine`: pseudo-label refinement by method (`--help` lists the methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from reidctl.cli import icrefine_options as ic
from reidctl.cli import options as o
from reidctl.cli.common import (app, err_console, multi_camera_cell, out_console, print_json, print_quality,
                                user_errors, warn_single_camera)
from reidctl.methods import METHODS
from reidctl.refine import run_refine


@app.command("refine", help="Refine pseudo labels with a method: " + ", ".join(METHODS) + ". "
             "Without --labels the method's default clustering runs first.")
@user_errors
def refine(
    features: Annotated[Path, typer.Argument(help="Features file (reidctl extract).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Refined labels file to write (HDF5; default: FEATURES.METHOD.h5 beside the features).")] = None,
    method: Annotated[str, typer.Option("--method", help="Refinement method: " + ", ".join(METHODS) + ".")] = "cc",
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels from `reidctl cluster` (default: cluster here).")] = None,
    eps: Annotated[Optional[float], typer.Option("--eps", help="DBSCAN radius when clustering here (method default).")] = None,
    k1: Annotated[Optional[int], typer.Option("--k1", help="Jaccard k1 when clustering here (method default).")] = None,
    k2: Annotated[Optional[int], typer.Option("--k2", help="Jaccard k2 when clustering here (method default).")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="pplr: top-k neighbours of the cross-agreement (20).")] = None,
    n_clusters: ic.NClusters = None,
    global_clustering: ic.GlobalClustering = None,
    decay: ic.Decay = None,
    epoch: Annotated[Optional[int], typer.Option("--epoch", help="icrefine: the epoch e of p(e) (0).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="icrefine: the number of epochs E of p(e) (50).")] = None,
    info_nodes: ic.InfoNodes = None,
    intra: Annotated[Optional[Path], typer.Option("--intra", help="icrefine: intra-camera labels from `reidctl intra-camera` (default: cluster each camera's features here).")] = None,
    intra_clusters: ic.IntraClusters = None,
    seed: o.Seed = 1,
    force: o.Force = False,
    json: o.Json = False,
) -> None:
    cluster = {k: v for k, v in {"eps": eps, "k1": k1, "k2": k2}.items() if v is not None}
    cluster.update(ic.icrefine_cluster(n_clusters, global_clustering))
    # method options (given ones only: a method refuses the options of another)
    options = {name: v for name, v in {"k": k}.items() if v is not None}
    options.update(ic.icrefine_refine(decay=decay, info_nodes=info_nodes, intra=intra, intra_clusters=intra_clusters,
                                      epoch=epoch, epochs=epochs))
    if out is None:  # `reidctl refine --method icrefine feats.h5` works as written
        out = features.with_name(f"{features.stem}.{method}.h5")
    summary = run_refine(method, features, out, labels_path=labels, cluster=cluster, options=options, seed=seed,
                         force=force)
    if json:
        print_json(summary)
        return
    table = Table(title=f"{out} ({method})", title_justify="left")
    for col in ("rows", "clusters", "outliers", "multi-camera"):
        table.add_column(col, justify="right")
    table.add_row(*(str(summary[k]) for k in ("rows", "clusters", "outliers")), multi_camera_cell(summary))
    out_console.print(table)
    warn_single_camera(summary)
    for note in summary.get("notes", []):
        err_console.print(note, highlight=False)
    if "quality" in summary:
        print_quality(summary["quality"])
