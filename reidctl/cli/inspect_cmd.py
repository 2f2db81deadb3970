"""`reidctl inspect`: what an artifact holds."""

from __future__ import annotations

import json as _json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from reidctl.artifacts import describe
from reidctl.cli.method_options import runtime_flags
from reidctl.cli.common import command, out_console, print_json


@command("inspect", run=runtime_flags("json"))
def inspect(
    file: Annotated[Path, typer.Argument(help="An HDF5 artifact written by reidctl.")],
    run: dict = None,  # how it runs (reidctl.cli.options.Runtime)
) -> None:
    """Print an artifact's schema, datasets (shapes, dtypes) and provenance."""
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
