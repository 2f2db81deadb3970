"""`reidctl refine`: pseudo-label refinement by method (`--help` lists the methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from reidctl.cli import options as o
from reidctl.cli.common import app, out_console, print_json, print_quality, user_errors
from reidctl.methods import METHODS
from reidctl.refine import run_refine


@app.command("refine", help="Refine pseudo labels with a method: " + ", ".join(METHODS) + ". "
             "Without --labels the method's default clustering runs first.")
@user_errors
def refine(
    features: Annotated[Path, typer.Argument(help="Features file (reidctl extract).")],
    out: Annotated[Path, typer.Option("--out", help="Refined labels file to write (HDF5).")],
    method: Annotated[str, typer.Option("--method", help="Refinement method: " + ", ".join(METHODS) + ".")] = "cc",
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels from `reidctl cluster` (default: cluster here).")] = None,
    eps: Annotated[Optional[float], typer.Option("--eps", help="DBSCAN radius when clustering here (method default).")] = None,
    k1: Annotated[Optional[int], typer.Option("--k1", help="Jaccard k1 when clustering here (method default).")] = None,
    k2: Annotated[Optional[int], typer.Option("--k2", help="Jaccard k2 when clustering here (method default).")] = None,
    seed: o.Seed = 1,
    json: o.Json = False,
) -> None:
    cluster = {k: v for k, v in {"eps": eps, "k1": k1, "k2": k2}.items() if v is not None}
    summary = run_refine(method, features, out, labels_path=labels, cluster=cluster, seed=seed)
    if json:
        print_json(summary)
        return
    table = Table(title=f"{out} ({method})", title_justify="left")
    for col in ("rows", "clusters", "outliers"):
        table.add_column(col, justify="right")
    table.add_row(*(str(summary[k]) for k in ("rows", "clusters", "outliers")))
    out_console.print(table)
    if "quality" in summary:
        print_quality(summary["quality"])
