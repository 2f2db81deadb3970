"""`reidctl export`: a checkpoint's model as TorchScript or ONNX, for use without reidctl."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from reidctl.cli.common import command, err_console, print_json
from reidctl.cli.method_options import runtime_flags


@command("export", run=runtime_flags("force", "json"))
def export(
    source: Annotated[Path, typer.Argument(
        metavar="CHECKPOINT|RUN_DIR",
        help="A reidctl checkpoint (.pt), or a `loop` run folder: its best.pt, else its last.pt.")],
    out: Annotated[Optional[Path], typer.Option("--out", help=(
        "File to write: NAME.ts for TorchScript, NAME.onnx for ONNX. Default: beside the checkpoint "
        "(RUN_DIR/best.ts, or best.onnx with --format onnx)."))] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help=(
        "torchscript or onnx (needs the onnx package). Default: onnx for an --out ending in .onnx, else "
        "torchscript."))] = None,
    run: dict = None,  # how it runs (reidctl.runtime.Runtime, reidctl.cli.options.CommandOptions)
) -> None:
    """Export the model: a normalised image batch → L2-normalised features; the preprocessing
    (input size, mean, std) goes to OUT.json beside it."""
    from reidctl.models.deploy import export_model, export_plan

    checkpoint, target, fmt = export_plan(source, out, fmt, force=run["force"])
    info = export_model(checkpoint, target, fmt)
    if run["json"]:
        print_json(info)
        return
    prep = info["preprocessing"]
    err_console.print(f"{fmt} of {checkpoint} → {target} ({info['channels']}-d features of "
                      f"{prep['height']}×{prep['width']} images, mean {prep['mean']}, std {prep['std']}; "
                      f"preprocessing in {info['preprocessing_file']})", highlight=False)
