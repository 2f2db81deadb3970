"""`reidctl intra-camera`: icrefine's stage 1, per-camera clusters → intra.h5."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from reidctl.cli import options as o
from reidctl.cli.common import command, err_console, out_console, print_json, run_request, runtime_of
from reidctl.models.spec import ModelSpec
from reidctl.cli.method_options import model_flags, prelude_flags, runtime_flags
from reidctl.methods.icrefine.prelude import INTRA_CAMERA
from reidctl.methods.icrefine.stage1 import IntraCameraRequest, resolve_params, run_intra_camera

Opt = typer.Option


@command("intra-camera", options=prelude_flags(INTRA_CAMERA), model=model_flags(),
         run=runtime_flags("extract_batch_size", "amp", "deterministic", "workers", "device", "seed", "force", "json",
                           "quiet"))
def intra_camera(
    ctx: typer.Context,
    data: o.Data,
    out: Annotated[Path, Opt("--out", help="Intra-camera labels file to write (HDF5), for `refine --method icrefine --intra`.")],
    options: dict = None,  # the stage's options (IntraCameraParams)
    dataset: o.DatasetName = None,
    checkpoint: o.Checkpoint = None,
    model: dict = None,  # ModelSpec options (reidctl.cli.method_options)
    run: dict = None,  # how it runs (reidctl.runtime.Runtime, reidctl.cli.options.CommandOptions)
) -> None:
    """icrefine stage 1: train a fresh model on each camera alone and keep its best clustering."""
    params = resolve_params(options)
    req = IntraCameraRequest(ModelSpec(checkpoint=checkpoint, **model), runtime_of(run), data=data, dataset=dataset,
                             params=params, force=run["force"])
    summary = run_request(ctx, req, run_intra_camera, out)
    if run["json"]:
        print_json(summary)
        return
    out_console.print(camera_table(summary, out))
    for cam in summary["per_camera"]:
        if "skipped" in cam:
            err_console.print(f"camera {cam['camera']} not clustered: {cam['skipped']}", highlight=False)
            continue
        if "k1" in cam:
            err_console.print(f"camera {cam['camera']}: {cam['images']} images, so its Jaccard k1 is {cam['k1']}",
                              highlight=False)
        if "note" in cam:
            err_console.print(f"camera {cam['camera']}: {cam['note']}", highlight=False)


def camera_table(summary: dict[str, Any], out: Path) -> Table:
    table = Table(title=f"{out} (intra-camera clusters)", title_justify="left")
    for col in ("camera", "images", "clusters", "best epoch", "silhouette", "trained epochs"):
        table.add_column(col, justify="right")
    for cam in summary["per_camera"]:
        s = cam.get("silhouette")
        table.add_row(str(cam["camera"]), str(cam["images"]), str(cam["clusters"] or "—"),
                      str(cam["best_epoch"]) if cam["best_epoch"] >= 0 else "—",
                      "—" if s is None else f"{s:.3f}", str(cam["trained_epochs"]))
    return table
