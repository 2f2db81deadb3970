"""Command-line interface: one small module per command, all registered on one Typer app.

Why the table below: importing a command module imports what it runs (torch, torchvision: about
5 s on a busy 2-core machine), so ``reidctl --help``, ``reidctl --version`` and ``reidctl COMMAND
--help`` must not import them. :func:`main` imports only the module of the command being run,
prints the top-level help from :data:`~reidctl.cli.commands.COMMANDS` and a command's help from the help manifest
(:mod:`reidctl.cli.help`); ``tests/test_cli_startup.py`` and ``tests/test_cli_help.py`` keep both
equal to the commands' own help. ``reidctl.cli.app`` (what the tests invoke) still has every
command registered.
"""

from __future__ import annotations

import sys
from typing import Any

from reidctl.cli.commands import COMMANDS, load_commands


def __getattr__(name: str) -> Any:
    if name == "app":  # the Typer app with every command registered
        load_commands()
        from reidctl.cli.common import app

        return app
    raise AttributeError(f"module 'reidctl.cli' has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """The ``reidctl`` entry point: top-level help and version without importing any command."""
    args = sys.argv[1:] if argv is None else argv
    first = args[0] if args else "--help"
    if first in ("--help", "-h"):
        from reidctl.cli.help import print_top_help

        print_top_help()
        return
    if first in COMMANDS and args[1:] in (["--help"], ["-h"]):
        from reidctl.cli.help import print_command_help

        if print_command_help(first, args[1]):
            return
    if first == "--version":
        from reidctl.version import __version__

        print(f"reidctl {__version__}")
        return
    load_commands([first] if first in COMMANDS else None)
    from reidctl.cli.common import app

    app(args=args, prog_name="reidctl")
