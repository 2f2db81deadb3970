"""`reidctl refine`: pseudo-label refinement by method (`--help` lists the methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from reidctl.cli.common import (command, err_console, multi_camera_cell, notice, out_console, print_json,
                                print_quality, settings, warn_about_labels)
from reidctl.cli.method_options import refine_flags, runtime_flags
from reidctl.cli.options import METHOD
from reidctl.methods import METHODS, get_method
from reidctl.stages.refine import run_refine
from reidctl.pipeline.rundir import summary_notes


@command("refine", options=refine_flags(), run=runtime_flags("seed", "force", "json", "quiet"),
         help="Refine pseudo labels with a method: " + ", ".join(METHODS) + ". "
         "Without --labels the method's default clustering runs first.")
def refine(
    features: Annotated[Path, typer.Argument(metavar="FEATURES", help="Features file (reidctl extract).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Refined labels file to write (HDF5; default: FEATURES.METHOD.h5 beside the features).")] = None,
    method: Annotated[str, typer.Option("--method", help="Refinement method: " + ", ".join(METHODS) + ".",
                                                    rich_help_panel=METHOD)] = "cc",
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels from `reidctl cluster` (default: cluster here).")] = None,
    options: dict = None,  # switches, clustering and every method's refine options (reidctl.cli.method_options)
    run: dict = None,  # how it runs (reidctl.runtime.Runtime, reidctl.cli.options.CommandOptions)
) -> None:
    if out is None:  # `reidctl refine --method icrefine feats.h5` works as written
        out = features.with_name(f"{features.stem}.{method}.h5")
    summary = run_refine(method, features, out, labels_path=labels, options=options,
                         **settings(run, "json")).to_json()
    if run["json"]:
        print_json(summary)
        return
    for note in summary_notes(summary):
        notice(note)
    if not get_method(method).clusters:  # no labels: the method's own report (mar: agreement pairs)
        _print_pairs(summary)
        return
    table = Table(title=f"{out} ({method})", title_justify="left")
    for col in ("rows", "clusters", "outliers", "multi-camera"):
        table.add_column(col, justify="right")
    table.add_row(*(str(summary[k]) for k in ("rows", "clusters", "outliers")), multi_camera_cell(summary))
    out_console.print(table)
    warn_about_labels(summary)
    for note in summary.get("notes", []):
        err_console.print(note, highlight=False)
    if "quality" in summary:
        print_quality(summary["quality"])


def _print_pairs(summary: dict) -> None:
    q = summary.get("pair_quality") or {}
    precision = f", {100 * q['precision']:.1f}% of them one person" if q.get("precision") is not None else ""
    out_console.print(f"{summary['rows']} images described by {summary['agents']} agents; "
                      f"{summary['agreement_pairs']} pairs agree above the threshold {summary['threshold']:.4f}"
                      f"{precision}", highlight=False)
