"""`reidctl extract`: images → features.h5."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reidctl.cli import options as o
from reidctl.cli.method_options import model_flags, runtime_flags
from reidctl.cli.common import command, err_console, print_json, run_request, runtime_of
from reidctl.models.spec import ModelSpec
from reidctl.stages.extract import ExtractRequest, run_extract


@command("extract", model=model_flags(),
         run=runtime_flags("batch_size", "workers", "device", "amp", "seed", "skip_bad_images", "force",
                           "json", "quiet"))
def extract(
    ctx: typer.Context,
    data: o.Data,
    out: Annotated[Path, typer.Option("--out", help="Features file to write (HDF5).")],
    split: Annotated[str, typer.Option("--split", help="train, query, gallery, test (query+gallery) or all.")] = "train",
    dataset: o.DatasetName = None,
    checkpoint: o.Checkpoint = None,
    model: dict = None,  # ModelSpec options (reidctl.cli.method_options)
    run: dict = None,  # how it runs (reidctl.runtime.Runtime, reidctl.cli.options.CommandOptions)
) -> None:
    """Extract L2-normalised eval-mode features of one split (rows = sorted relative paths)."""
    req = ExtractRequest(ModelSpec(checkpoint=checkpoint, **model), runtime_of(run), data=data, dataset=dataset,
                         split=split, skip_bad_images=run["skip_bad_images"], force=run["force"])
    result = run_request(ctx, req, run_extract, out)
    if run["json"]:
        print_json(result.to_json())
    else:
        msg = f"wrote {result.rows} × {result.dim} features ({result.split}) to {out}"
        if result.skipped_images:
            msg += f"; skipped {result.skipped_images} unreadable images"
        err_console.print(msg, highlight=False)
