"""The table of commands: each one's module and one-line summary, readable without importing any
command (the fast top-level help and :func:`load_commands` use it)."""

from __future__ import annotations

import importlib

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
