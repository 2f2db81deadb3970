"""Command-line interface: one small module per command, all registered on one Typer app."""

from reidctl.cli.common import app

# Importing a command module registers its command on `app`.
from reidctl.cli import (  # noqa: F401,E402,I001  (pipeline order = help order)
    synth, extract, cluster, intra_camera, pretrain, refine, train_epoch, loop, evaluate, rank, export, inspect_cmd,
)


def main() -> None:
    app()
