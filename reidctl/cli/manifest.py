"""Write or check the help manifest (``reidctl/cli/help_manifest.json``) from the live commands.

The fast help (:mod:`reidctl.cli.help`) reads the manifest; this module builds it by importing
every command, so it lives apart from the help (which the CLI imports) and nothing imports it::

    python -m reidctl.cli.manifest --write     # after changing any command's options
    python -m reidctl.cli.manifest --check     # exit 1 when the manifest is stale
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

from reidctl.cli.help import FORMAT, MANIFEST, encode_param, load_manifest


def build_manifest() -> dict[str, Any]:
    """Every command's help and parameters, read from the live app (imports every command)."""
    from typer.utils import get_params_from_function

    from reidctl.cli import app
    from reidctl.cli.common import ReidctlCommand

    commands = {}
    for info in app.registered_commands:
        if info.cls not in (None, ReidctlCommand) or info.context_settings or info.epilog or info.short_help \
                or info.hidden or info.deprecated or info.rich_help_panel or info.no_args_is_help:
            raise ValueError(f"command {info.name}: a setting the help manifest does not record")
        help_text = inspect.getdoc(info.callback) if info.help is None else inspect.cleandoc(info.help)
        params = [encode_param(meta) for meta in get_params_from_function(info.callback).values()]
        commands[info.name] = {"help": help_text, "params": params}
    return {"format": FORMAT, "commands": commands}


def write_manifest(path: Path = MANIFEST) -> None:
    """Write the manifest (atomically: a reader never sees half a file)."""
    from reidctl.artifacts import atomic_save

    text = json.dumps(build_manifest(), indent=1, ensure_ascii=False) + "\n"
    atomic_save(text, path, lambda obj, tmp: tmp.write_text(obj, encoding="utf-8"))


def stale_commands() -> list[str]:
    """The commands whose manifest entry differs from the live command (imports every command)."""
    saved = (load_manifest() or {}).get("commands", {})
    live = build_manifest()["commands"]
    return sorted(name for name in set(saved) | set(live) if saved.get(name) != live.get(name))


def main(argv: list[str] | None = None) -> int:
    """``python -m reidctl.cli.manifest --write | --check``."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--write"]:
        write_manifest()
        print(f"wrote {MANIFEST}")
        return 0
    if args == ["--check"]:
        stale = stale_commands()
        if stale:
            print(f"{MANIFEST} is stale for: {', '.join(stale)}; run: python -m reidctl.cli.manifest --write")
            return 1
        print(f"{MANIFEST} is up to date")
        return 0
    print("usage: python -m reidctl.cli.manifest --write | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
