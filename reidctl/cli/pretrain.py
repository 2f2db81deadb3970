"""`reidctl pretrain`: supervised training on a labelled source dataset (MAR's agents)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from reidctl.cli import options as o
from reidctl.cli.common import command, out_console, print_json, runtime_of
from reidctl.models.spec import ModelSpec
from reidctl.cli.method_options import mar_model_flags, pretrain_flags, runtime_flags
from reidctl.methods.plan import model_settings
from reidctl.methods.mar import MAR, PretrainRequest, run_pretrain
from reidctl.methods.mar.pretrain import PretrainParams
from reidctl.options import resolve
from reidctl.data.source import DEFAULT_SOURCE_SPLITS


@command("pretrain", options=pretrain_flags(), model=mar_model_flags(),
         run=runtime_flags("workers", "device", "amp", "deterministic", "seed", "force", "json",
                           "quiet"))
def pretrain(
    data: o.Data,
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write (.pt): the model and its agents.")],
    splits: Annotated[str, typer.Option(
        "--splits", help="train,test: every identity of the dataset, as MAR learns all of MSMT17's (test identities "
        "are numbered after the train ones, so the two splits never share an agent); or train.")
    ] = DEFAULT_SOURCE_SPLITS,
    dataset: o.DatasetName = None,
    options: dict = None,  # PretrainParams (reidctl.cli.method_options)
    model: dict = None,  # ModelSpec options, MAR's model by default
    run: dict = None,  # how it runs (reidctl.runtime.Runtime, reidctl.cli.options.CommandOptions)
) -> None:
    """Train a fresh model with a normalised softmax over a labelled dataset's identities; its
    classifier rows are MAR's agents, and the checkpoint starts any method (`loop --checkpoint`)."""
    params = resolve(PretrainParams, options, what="`reidctl pretrain`")
    req = PretrainRequest(ModelSpec(**{**model, **model_settings(MAR, model)}), runtime_of(run), data=data,
                          dataset=dataset, splits=splits, params=params, force=run["force"])
    result = run_pretrain(req, out)
    if run["json"]:
        print_json(result)
        return
    table = Table(title=f"{out}: {result['identities']} identities, {result['images']} images ({result['splits']})",
                  title_justify="left")
    for col in ("epoch", "loss", "train accuracy %", "lr"):
        table.add_column(col, justify="right")
    for h in result["history"]:
        table.add_row(str(h["epoch"]), f"{h['loss']:.3f}", f"{100 * h['accuracy']:.1f}", f"{h['lr']:.2g}")
    out_console.print(table)
