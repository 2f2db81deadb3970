"""`reidctl export`: a checkpoint's model as TorchScript or ONNX, for use without reidctl."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reidctl.artifacts import check_output
from reidctl.cli.common import command, err_console, print_json
from reidctl.cli.method_options import runtime_flags
from reidctl.errors import ArtifactError
from reidctl.models.deploy import export_model


@command("export", run=runtime_flags("force", "json"))
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A reidctl checkpoint (.pt).")],
    out: Annotated[Path, typer.Option("--out", help="File to write (.pt for TorchScript, .onnx for ONNX).")],
    fmt: Annotated[str, typer.Option("--format", help="torchscript or onnx (needs the onnx package).")] = "torchscript",
    run: dict = None,  # how it runs (reidctl.cli.options.Runtime)
) -> None:
    """Export the model: a normalised image batch → L2-normalised features; the preprocessing
    (input size, mean, std) goes to OUT.json beside it."""
    check_output(out, schema="", inputs=(checkpoint,), force=True)  # never over the checkpoint itself
    if out.exists() and not run["force"]:
        raise ArtifactError(f"--out {out} exists; pass --force to replace it")
    info = export_model(checkpoint, out, fmt)
    if run["json"]:
        print_json(info)
        return
    prep = info["preprocessing"]
    err_console.print(f"{fmt} → {out} ({info['channels']}-d features of {prep['height']}×{prep['width']} images, "
                      f"mean {prep['mean']}, std {prep['std']}; preprocessing in {info['preprocessing_file']})",
                      highlight=False)

