"""`reidctl inspect`: what an artifact, a checkpoint, an exported model or a run's file holds."""

from __future__ import annotations

import json as _json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from reidctl.artifacts import CHECKPOINT, describe, existing_schema
from reidctl.cli.method_options import runtime_flags
from reidctl.cli.common import command, out_console, print_json


@command("inspect", run=runtime_flags("json"))
def inspect(
    file: Annotated[Path, typer.Argument(metavar="FILE", help=(
        "A file reidctl wrote: an HDF5 artifact, a checkpoint (.pt), an exported model (.ts, .onnx) or its "
        ".json record, a run's summary.json or config.toml."))],
    run: dict = None,  # how it runs (reidctl.runtime.Runtime, reidctl.cli.options.CommandOptions)
) -> None:
    """Print what a file reidctl wrote holds: an artifact's schema and provenance, a checkpoint's model and history, an exported model, a run's summary.json or config.toml.

    An artifact shows its datasets (shapes, dtypes); a checkpoint its model, method, options,
    epoch and history; an exported model its format, input size, mean/std and source checkpoint.
    Nothing in the file is run (a TorchScript file is read as a zip archive, never loaded)."""
    if existing_schema(file) == CHECKPOINT:
        _checkpoint(file, run["json"])
        return
    from reidctl.reporting.inspection import describe_file, kind_of

    if kind_of(file) is not None or (file.is_file() and not _is_hdf5(file)):
        _other(describe_file(file), run["json"])  # an unknown file: one line naming what inspect reads
        return
    info = describe(file)
    if run["json"]:
        print_json(info)
        return
    table = _key_value_table(str(file))
    for key in ("schema", "schema_version", "reidctl_version", "created", "seed", "digest"):
        table.add_row(key, str(info[key]))
    for name, desc in info["datasets"].items():
        table.add_row(f"[cyan]{name}[/]", desc)
    for key, value in info["attrs"].items():
        table.add_row(f"attr {key}", str(value))
    for label, text in probe_rows(info["attrs"]):
        table.add_row(label, text)
    table.add_row("params", _json.dumps(info["params"], indent=1, sort_keys=True))
    table.add_row("inputs", _json.dumps(info["inputs"], indent=1, sort_keys=True) if info["inputs"] else "—")
    out_console.print(table)


def probe_rows(attrs: dict) -> list[tuple[str, str]]:
    """The recall probes of an approximate kNN search in a stage's summary, one readable row each
    (the summary holds them as JSON): recall@k, identical lists, sample, and a fallback."""
    try:
        summary = _json.loads(attrs.get("summary", "{}"))
    except (TypeError, ValueError):
        return []
    rows = []
    for key in sorted(k for k in summary if k.startswith("knn_probe")):
        p = summary[key]
        rows.append((key.replace("knn_probe", "kNN recall probe"),
                     f"recall@{p['k']} {p['recall']:.3f}, identical lists {p['identical']:.3f} "
                     f"on {p['rows']:,} rows (seed {p['seed']}) against exact search"))
    tuning = summary.get("knn_tuning")
    if tuning:
        rows.append(("kNN tuning", f"{len(tuning['rounds'])} trial(s), sample recall {tuning['sample_recall']:.3f}"
                     + (": fell back to exact search" if tuning["exact_fallback"] else f", settings {tuning['settings']}")))
    return rows


def _is_hdf5(file: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(file))
    except OSError:
        return False


def _key_value_table(title: str) -> Table:
    """A two-column table, keys in bold, titled with the file."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    return table


def _other(info: dict, as_json: bool) -> None:
    """An exported model, an export record, a summary or a config: one row per entry."""
    from reidctl.reporting.inspection import table_rows

    if as_json:
        print_json(info)
        return
    table = _key_value_table(f"{info['path']} ({info['kind']})")
    for label, text in table_rows(info):
        table.add_row(Text(label), Text(text))  # paths and values as they are, never markup
    out_console.print(table, highlight=False)


def _checkpoint(file: Path, as_json: bool) -> None:
    from reidctl.models.checkpoint import describe_checkpoint

    info = describe_checkpoint(file)
    if as_json:
        print_json(info)
        return
    table = _key_value_table(str(file))
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
