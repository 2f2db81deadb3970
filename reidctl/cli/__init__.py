"""Command-line interface: one small module per command, all registered on one Typer app.

Why the table below: importing a command module imports what it runs (torch, torchvision: about
5 s on a busy 2-core machine), so ``reidctl --help``, ``reidctl --version`` and ``reidctl COMMAND
--help`` must not import them. :func:`main` imports only the module of the command being run,
prints the top-level help from :data:`COMMANDS` and a command's help from the help manifest
(:mod:`reidctl.cli.help`); ``tests/test_cli_startup.py`` and ``tests/test_cli_help.py`` keep both
equal to the commands' own help. ``reidctl.cli.app`` (what the tests invoke) still has every
command registered.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

#: command → (module under reidctl.cli, one-line summary = the first line of its help), in help order
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "Write a synthetic re-ID dataset: drawn pedestrians, cameras with their own look."),
    "extract": ("extract", "Extract L2-normalised eval-mode features of one split (rows = sorted relative paths)."),
    "cluster": ("cluster", "Cluster features into pseudo identities on the k-reciprocal Jaccard distance."),
    "intra-camera": ("intra_camera", "icrefine stage 1: train a fresh model on each camera alone and keep its best "
                     "clustering."),
    "pretrain": ("pretrain", "Train a fresh model with a normalised softmax over a labelled dataset's identities; its "
                 "classifier rows are MAR's agents, and the checkpoint starts any method (`loop --checkpoint`)."),
    "refine": ("refine", "Refine pseudo labels with a method: cc, pplr, icrefine, ncplr, gl-ncplr, mar."),
    "train-epoch": ("train_epoch", "Train one epoch on pseudo labels (run under torchrun for several GPUs/processes)."),
    "loop": ("loop", "Extract → cluster → refine → train-epoch each epoch; re-running resumes where it stopped."),
    "report": ("report", "Draw runs per epoch: (a) mAP and rank-1, (b) pseudo-label F and NMI against ground truth, "
               "(c) clusters, outliers and multi-camera clusters, (d) the training loss per iteration."),
    "evaluate": ("evaluate", "Evaluate a features file, or a model on --data (a --checkpoint, or a fresh model: ImageNet by default)."),
    "rank": ("rank", "Rank GALLERY for every QUERY image: the --top-k nearest, with distances (no identities needed)."),
    "export": ("export", "Export the model: a normalised image batch → L2-normalised features; the preprocessing "
               "(input size, mean, std) goes to OUT.json beside it."),
    "inspect": ("inspect_cmd", "Print what a file reidctl wrote holds: an artifact's schema and provenance, a "
                "checkpoint's model and history, an exported model, a run's summary.json or config.toml."),
}


def load_commands(names: list[str] | None = None) -> None:
    """Import the modules of ``names`` (default: every command); importing one registers it."""
    for name in COMMANDS if names is None else names:
        importlib.import_module(f"reidctl.cli.{COMMANDS[name][0]}")


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
        from reidctl import __version__

        print(f"reidctl {__version__}")
        return
    load_commands([first] if first in COMMANDS else None)
    from reidctl.cli.common import app

    app(args=args, prog_name="reidctl")
