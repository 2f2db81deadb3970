"""`reidctl train-epoch`: checkpoint + labels.h5 → the next checkpoint (one epoch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from reidctl.runtime import dist
from reidctl.cli import options as o
from reidctl.cli.common import command, err_console, notice, print_json, run_request, runtime_of
from reidctl.pipeline.rundir import summary_notes
from reidctl.models.spec import ModelSpec
from reidctl.cli.method_options import model_flags, runtime_flags, train_flags
from reidctl.methods.plan import model_settings, switches_of
from reidctl.methods import METHODS, get_method
from reidctl.stages.train_epoch import TrainEpochRequest, run_train_epoch



@command("train-epoch", options=train_flags(), model=model_flags(by_method=True),
         run=runtime_flags("amp", "deterministic", "extract_batch_size", "workers", "device", "seed", "force", "json",
                           "quiet"))
def train_epoch(
    ctx: typer.Context,
    data: o.Data,
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write (.pt).")],
    labels: Annotated[Optional[Path], typer.Option(
        "--labels", help="Pseudo labels of the train split (reidctl cluster / refine); a method that trains "
        "without pseudo labels takes none.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", help="Checkpoint to continue; without it a fresh model is built from --arch/--weights/--pretrained.",
        rich_help_panel=o.MODEL)] = None,
    method: Annotated[str, typer.Option("--method", help=f"Training method: {', '.join(METHODS)}.",
                                                    rich_help_panel=o.METHOD)] = "cc",
    features: Annotated[Optional[Path], typer.Option(
        "--features", help="Train features to initialise the cluster centroids (default: extract them with the model)."
    )] = None,
    epoch: Annotated[Optional[int], typer.Option("--epoch", help="Epoch number (default: the checkpoint's + 1, or 0).")] = None,
    options: dict = None,  # the methods' training options (reidctl.cli.method_options)
    run: dict = None,  # how it runs (reidctl.runtime.Runtime, reidctl.cli.options.CommandOptions)
    dataset: o.DatasetName = None,
    model: dict = None,  # ModelSpec options (reidctl.cli.method_options)
) -> None:
    """Train one epoch on pseudo labels (run under torchrun for several GPUs/processes)."""
    method_cls = get_method(method)
    spec = ModelSpec(checkpoint=checkpoint, **{**model, **model_settings(method_cls, model, switches_of(method_cls, options))})
    req = TrainEpochRequest(spec, runtime_of(run), data=data, labels=labels, dataset=dataset, method=method,
                            features=features, epoch=epoch, overrides=options, force=run["force"])
    result = run_request(ctx, req, run_train_epoch, out)
    if dist.env_rank() != 0:
        return
    if run["json"]:
        print_json(result.to_json())
    else:
        for note in summary_notes(result.to_json()):
            notice(note)
        stats = result.stats
        clusters = f" in {stats.clusters} clusters" if method_cls.clusters else ""
        err_console.print(
            f"epoch {stats.epoch}: loss {stats.loss:.4f}, {stats.iterations} iterations on "
            f"{stats.images} images{clusters}, {stats.seconds:.1f} s → {out}",
            highlight=False,
        )
