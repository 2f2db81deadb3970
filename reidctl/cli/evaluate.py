"""`reidctl evaluate`: mAP, CMC and mINP under the Market-1501 protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from reidctl.cli import options as o
from reidctl.cli.method_options import model_flags, runtime_flags
from reidctl.cli.common import command, err_console, flags, given_options, out_console, print_json, runtime_of
from reidctl.errors import ReidctlError
from reidctl.stages.evaluate import WorstSheet, evaluate_feature_file, evaluate_model
from reidctl.models.spec import ModelSpec


#: Options that only matter when `evaluate` extracts features itself (--data).
MODEL_OPTIONS = {"checkpoint", "dataset", "arch", "pooling", "last_stride", "parts", "height", "width", "weights",
                 "pretrained", "batch_size", "workers", "device", "seed"}


@command("evaluate", run=runtime_flags("batch_size", "workers", "device", "seed", "force", "json", "quiet"), model=model_flags())
def evaluate(
    ctx: typer.Context,
    features: Annotated[Optional[Path], typer.Argument(metavar="FEATURES", help="Features file holding query and gallery rows.")] = None,
    checkpoint: o.Checkpoint = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Dataset to evaluate a --checkpoint or fresh model on.",
                                                                 rich_help_panel=o.DATA)] = None,
    dataset: o.DatasetName = None,
    ap: Annotated[str, typer.Option("--ap", help="sklearn (non-interpolated, CC family) or trapezoid (MAR, Market MATLAB).")] = "sklearn",
    rerank: Annotated[bool, typer.Option("--rerank", help="k-reciprocal re-ranking (k1 20, k2 6, λ 0.3).")] = False,
    pairs: Annotated[str, typer.Option("--pairs", help="market (protocol), cross-camera or same-camera gallery only.")] = "market",
    sheet: Annotated[Optional[Path], typer.Option(
        "--sheet", help="Draw a PNG of the queries with the lowest AP and their top matches (green right, red wrong).")] = None,
    queries: Annotated[int, typer.Option("--queries", help="Rows (worst queries) on the --sheet.")] = 10,
    top_k: Annotated[int, typer.Option("--top-k", help="Matches per row on the --sheet.")] = 10,
    model: dict = None,  # ModelSpec options (reidctl.cli.method_options)
    run: dict = None,  # how it runs (reidctl.runtime.Runtime, reidctl.cli.options.CommandOptions)
) -> None:
    """Evaluate a features file, or a model on --data (a --checkpoint, or a fresh model: ImageNet by default)."""
    given = given_options(ctx)
    if sheet is None and given & {"queries", "top_k"}:
        raise ReidctlError(f"{flags(ctx, given & {'queries', 'top_k'})}: these shape the --sheet; give --sheet FILE.png too")
    worst = None if sheet is None else WorstSheet(sheet, queries, top_k, force=run["force"])
    if features is not None and data is not None:
        raise ReidctlError("give either a features file or --data (with a model), not both")
    if features is not None:
        unused = given & MODEL_OPTIONS
        if unused:
            raise ReidctlError(f"{flags(ctx, unused)}: these choose the model that `evaluate --data` extracts "
                               f"features with; {features} is evaluated as it is (drop them)")
        result = evaluate_feature_file(features, ap=ap, rerank=rerank, pairs=pairs, sheet=worst)
        source = str(features)
    elif data is not None:
        spec = ModelSpec(checkpoint=checkpoint, **model)
        spec.check_given(given)
        result = evaluate_model(spec, data, dataset, ap=ap, rerank=rerank, pairs=pairs, runtime=runtime_of(run),
                                sheet=worst)
        source = f"{checkpoint or 'a fresh ' + spec.arch + ' (' + result.init + ')'} on {data}"
    else:
        raise ReidctlError("nothing to evaluate: give a features file, or --data (with --checkpoint, or a fresh model)")
    if run["json"]:
        print_json(result.to_json())
        return
    table = Table(title=f"{source} — {result.queries} queries × {result.gallery} gallery, "
                  f"AP {ap}{', re-ranked' if rerank else ''}, pairs {pairs}", title_justify="left")
    other = "trapezoid" if ap == "sklearn" else "sklearn"
    for col in ("mAP %", f"mAP ({other} AP) %", "rank-1 %", "rank-5 %", "rank-10 %", "mINP %"):
        table.add_column(col, justify="right")
    record = result.to_json()
    table.add_row(*(f"{100 * record[k]:.2f}" for k in ("mAP", f"mAP_{other}", "rank1", "rank5", "rank10", "mINP")))
    out_console.print(table)
    if result.sheet is not None:
        err_console.print(f"wrote the {len(result.sheet['queries'])} worst queries to {result.sheet['out']}",
                          highlight=False)
