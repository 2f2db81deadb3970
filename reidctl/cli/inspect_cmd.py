"""`reidctl inspect`: what an artifact holds."""

from __future__ import annotations

import json as _json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from reidctl.artifacts import CHECKPOINT, describe, existing_schema
from reidctl.cli.method_options import runtime_flags
from reidctl.cli.common import command, out_console, print_json


@command("inspect", run=runtime_flags("json"))
def inspect(
    file: Annotated[Path, typer.Argument(help="An HDF5 artifact or a checkpoint (.pt) written by reidctl.")],
    run: dict = None,  # how it runs (reidctl.cli.options.Runtime)
) -> None:
    """Print an artifact's schema, datasets (shapes, dtypes) and provenance; for a checkpoint its
    model, method, options, epoch and history."""
    if existing_schema(file) == CHECKPOINT:
        _checkpoint(file, run["json"])
        return
    info = describe(file)
    if run["json"]:
        print_json(info)
        return
    table = Table(title=f"{file}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key in ("schema", "schema_version", "reidctl_version", "created", "seed", "digest"):
        table.add_row(key, str(info[key]))
    for name, desc in info["datasets"].items():
        table.add_row(f"[cyan]{name}[/]", desc)
    for key, value in info["attrs"].items():
        table.add_row(f"attr {key}", str(value))
    table.add_row("params", _json.dumps(info["params"], indent=1, sort_keys=True))
    table.add_row("inputs", _json.dumps(info["inputs"], indent=1, sort_keys=True) if info["inputs"] else "—")
    out_console.print(table)


def _checkpoint(file: Path, as_json: bool) -> None:
    from reidctl.train.checkpoint import describe_checkpoint

    info = describe_checkpoint(file)
    if as_json:
        print_json(info)
        return
    table = Table(title=f"{file}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key in ("schema", "reidctl_version", "digest", "method", "epoch", "steps", "parameters"):
        table.add_row(key, str(info[key]))
    table.add_row("model", _json.dumps(info["model_config"], sort_keys=True))
    table.add_row("options", _json.dumps(info["method_params"], indent=1, sort_keys=True) if info["method_params"] else "—")
    table.add_row("heads", ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in info["heads"].items()) or "—")
    if info["method_arrays"]:
        table.add_row("method state", f"{info['method_arrays']['file']} (digest {info['method_arrays']['digest']})")
    for h in info["history"]:
        table.add_row(f"epoch {h.get('epoch')}", f"loss {h.get('loss', float('nan')):.4f}, {h.get('iterations')} iterations, "
                      f"{h.get('seconds', 0):.1f} s, lr {h.get('lr')}")
    table.add_row("provenance", _json.dumps(info["provenance"], sort_keys=True) if info["provenance"] else "—")
    out_console.print(table)
