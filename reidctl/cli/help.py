"""Help without importing the commands: ``reidctl --help`` from the command table, and
``reidctl COMMAND --help`` from the help manifest.

Importing a command module imports torch (its options are declared on the dataclasses of the
methods, models and stages that use them), which takes 5-12 s; asking for help must not wait for
that. ``help_manifest.json`` beside this file holds each command's parameters exactly as Typer
reads them from the command's signature (type, default, option names, help, panel ...); the
command's help is printed by Typer itself from a stand-in command with that signature, in an app
made like the real one (:func:`reidctl.cli.common.make_app`), so the two print the same text.
``tests/test_cli_help.py`` checks that they do for every command: a changed option fails the tests
until the manifest is written again with ``python -m reidctl.cli.manifest --write``
(:mod:`reidctl.cli.manifest`, which imports every command to build it).
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from reidctl.cli.commands import COMMANDS

#: The app's description, shown under the usage line (also the Typer app's ``help``).
DESCRIPTION = "Unsupervised person re-identification: extract, cluster, refine, train — stage by stage."
MANIFEST = Path(__file__).with_name("help_manifest.json")
FORMAT = 1
#: Attributes of Typer's parameter info that do not change the help, and cannot be written to JSON.
NOT_HELP = {"callback", "is_eager"}


def print_top_help(console: Console | None = None) -> None:
    """Usage, description, the global options and one row per command, in Typer's panel style."""
    console = console or Console()
    console.print("\n [bold]Usage:[/] reidctl [OPTIONS] COMMAND [ARGS]...\n", highlight=False)
    console.print(f" {DESCRIPTION}\n", highlight=False)
    options = Table.grid(padding=(0, 2))
    options.add_row("[bold cyan]--version[/]", "Print the version and exit.")
    options.add_row("[bold cyan]--help[/]", "Show this message and exit.")
    console.print(Panel(options, title="Options", title_align="left", border_style="dim"))
    commands = Table.grid(padding=(0, 2))
    for name, (_, summary) in COMMANDS.items():
        commands.add_row(f"[bold cyan]{name}[/]", escape(summary))
    console.print(Panel(commands, title="Commands", title_align="left", border_style="dim"))
    console.print(" Run [bold]reidctl COMMAND --help[/] for a command's options.\n", highlight=False)


def load_manifest(path: Path = MANIFEST) -> dict[str, Any] | None:
    """The committed manifest, or None when it is missing, unreadable or of another format."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def encode_param(meta: Any) -> dict[str, Any]:
    from typer.models import ArgumentInfo, OptionInfo, ParameterInfo

    entry: dict[str, Any] = {"name": meta.name, "type": encode_type(meta.annotation)}
    info = meta.default
    if not isinstance(info, ParameterInfo):  # typer.Context: no parameter of the command line
        if info is not inspect.Parameter.empty:
            raise ValueError(f"parameter {meta.name}: declare it with typer.Option or typer.Argument")
        return entry
    entry["kind"] = "argument" if isinstance(info, ArgumentInfo) else "option"
    base = vars(ArgumentInfo() if isinstance(info, ArgumentInfo) else OptionInfo())
    given = {}
    for key, value in vars(info).items():
        if key in NOT_HELP or value == base.get(key) or key == "default":
            continue
        given[key] = encode_value(value, f"{meta.name}.{key}")
    entry["info"] = given
    entry["default"] = {"required": True} if info.default is ... else encode_value(info.default, meta.name)
    return entry


def _decode_param(entry: dict[str, Any]) -> inspect.Parameter:
    from typer.models import ArgumentInfo, OptionInfo

    annotation = decode_type(entry["type"])
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    if "kind" not in entry:
        return inspect.Parameter(entry["name"], kind, annotation=annotation)
    cls = ArgumentInfo if entry["kind"] == "argument" else OptionInfo
    values = {k: decode_value(v) for k, v in entry["info"].items()}
    if "param_decls" in values:
        values["param_decls"] = tuple(values["param_decls"])
    default = entry["default"]
    values["default"] = ... if default == {"required": True} else decode_value(default)
    return inspect.Parameter(entry["name"], kind, default=cls(**values), annotation=annotation)


_TYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool, "Path": Path}


def encode_type(annotation: Any) -> str:
    """``Optional[int]`` → "int | None", ``list[Path]`` → "list[Path]", a Context → "Context"."""
    import typer

    if annotation is typer.Context:
        return "Context"
    for name, typ in _TYPES.items():
        if annotation is typ:
            return name
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return encode_type(next(a for a in args if a is not type(None))) + " | None"
    if origin is list and len(args) == 1:
        return f"list[{encode_type(args[0])}]"
    raise ValueError(f"the help manifest cannot record the type {annotation!r}")


def decode_type(text: str) -> Any:
    """The inverse of :func:`encode_type` (a fixed grammar: nothing is evaluated)."""
    import typer

    if text.endswith(" | None"):
        return Optional[decode_type(text[: -len(" | None")])]
    if text.startswith("list[") and text.endswith("]"):
        return list[decode_type(text[5:-1])]  # type: ignore[misc]
    if text == "Context":
        return typer.Context
    return _TYPES[text]


def encode_value(value: Any, where: str) -> Any:
    """A default or setting as JSON (a path as ``{"path": ...}``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return {"path": str(value)}
    if isinstance(value, (list, tuple)):
        return [encode_value(v, where) for v in value]
    raise ValueError(f"{where}: the help manifest cannot record {value!r}")


def decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        return Path(value["path"])
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    return value


# ------------------------------------------------------------------------------ printing


def help_app(name: str, manifest: dict[str, Any] | None = None) -> Any:
    """An app made like ``reidctl``'s whose only command ``name`` has the manifest's parameters
    (its body never runs: it only answers ``--help``); None when the manifest lacks it."""
    manifest = load_manifest() if manifest is None else manifest
    entry = (manifest or {}).get("commands", {}).get(name)
    if entry is None:
        return None
    from reidctl.cli.common import make_app

    def stand_in(**kwargs: Any) -> None:
        raise RuntimeError("the help manifest's stand-in of a command only prints its help")

    params = [_decode_param(p) for p in entry["params"]]
    stand_in.__signature__ = inspect.Signature(params, __validate_parameters__=False)  # type: ignore[attr-defined]
    stand_in.__annotations__ = {p.name: p.annotation for p in params}
    app = make_app()
    app.command(name, help=entry["help"])(stand_in)
    return app


def print_command_help(name: str, flag: str = "--help") -> bool:
    """Print ``reidctl NAME --help`` from the manifest (exits like Typer's help does); False when
    the manifest has no such command, so that the caller imports the command instead."""
    app = help_app(name)
    if app is None:
        return False
    app(args=[name, flag], prog_name="reidctl")
    return True
