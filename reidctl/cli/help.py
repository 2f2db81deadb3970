"""``reidctl --help`` from the command table alone (no command module, hence no torch, imported)."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from reidctl.cli import COMMANDS

#: The app's description, shown under the usage line (also the Typer app's ``help``).
DESCRIPTION = "Unsupervised person re-identification: extract, cluster, refine, train — stage by stage."


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
        commands.add_row(f"[bold cyan]{name}[/]", summary)
    console.print(Panel(commands, title="Commands", title_align="left", border_style="dim"))
    console.print(" Run [bold]reidctl COMMAND --help[/] for a command's options.\n", highlight=False)
