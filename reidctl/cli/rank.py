"""`reidctl rank`: the top-k gallery matches of each query, as CSV or JSON, and a picture sheet."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from reidctl.cli import options as o
from reidctl.cli.common import command, err_console, flags, given_options, print_json, runtime_of
from reidctl.models.spec import ModelSpec
from reidctl.cli.method_options import model_flags, runtime_flags
from reidctl.evaluation.ranking import as_json, csv_text
from reidctl.stages.rank import RankRequest, run_rank


#: Options that only matter when a side is images that `rank` extracts itself.
EXTRACTION_OPTIONS = {flag.key for flag in model_flags()} | {"checkpoint", "batch_size", "workers"}


@command("rank", run=runtime_flags("batch_size", "workers", "device", "force", "json", "quiet"), model=model_flags())
def rank(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(metavar="QUERY", help="Query: a features file, or images (a folder, a CSV manifest, an "
                                         "image file) to extract with the model.")],
    gallery: Annotated[str, typer.Argument(metavar="GALLERY", help="Gallery: a features file, or images to extract with the model.")],
    checkpoint: o.Checkpoint = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Matches per query.")] = 10,
    rerank: Annotated[bool, typer.Option("--rerank", help="k-reciprocal re-ranking (k1 20, k2 6, λ 0.3); needs "
                                         "dense (Q+G)² memory.")] = False,
    cross_camera_only: Annotated[bool, typer.Option(
        "--cross-camera-only", help="Only gallery images from other cameras than the query's.")] = False,
    same_image: Annotated[bool, typer.Option(
        "--same-image", help="Keep a query's own image file among its matches (dropped by default).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the CSV here instead of printing it.")] = None,
    sheet: Annotated[Optional[Path], typer.Option(
        "--sheet", help="Draw a PNG: one row per query, its matches with distances; green/red borders when "
        "identities are known.")] = None,
    queries: Annotated[int, typer.Option("--queries", help="Rows (queries) on the --sheet, from the first.")] = 20,
    model: dict = None,  # ModelSpec options (reidctl.cli.method_options)
    run: dict = None,  # how it runs (reidctl.runtime.Runtime, reidctl.cli.options.CommandOptions)
) -> None:
    """Rank GALLERY for every QUERY image: the --top-k nearest, with distances (no identities needed).

    Prints CSV (query, query_camid, query_pid, rank, gallery, gallery_camid, gallery_pid, distance, match)
    unless --out or --json is given; unknown cells are empty.
    """
    given = given_options(ctx)
    req = RankRequest(ModelSpec(checkpoint=checkpoint, **model), runtime_of(run), query=query, gallery=gallery,
                      top_k=top_k, rerank=rerank, cross_camera_only=cross_camera_only, same_image=same_image, out=out,
                      sheet=sheet, queries=queries, force=run["force"],
                      extraction_flags=flags(ctx, given & EXTRACTION_OPTIONS))
    req.model.check_given(given)
    ranking, summary = run_rank(req)
    wrote = {k: v for k, v in (("out", summary.out), ("sheet", summary.sheet)) if v is not None}
    if run["json"]:
        print_json({**as_json(ranking), **wrote})
    elif out is None:
        sys.stdout.write(csv_text(ranking))
    if not run["json"]:
        err_console.print(f"ranked {summary.gallery} gallery images for {summary.queries} "
                          f"quer{'y' if summary.queries == 1 else 'ies'}"
                          + (f"; wrote {', '.join(wrote.values())}" if wrote else ""), highlight=False)
