"""Option declarations shared by several commands, so a flag means the same everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from reidctl.data.layouts import LAYOUTS
from reidctl.options import option, option_fields
from reidctl.runtime import Runtime

#: The help panels of a command's options, in the order ``--help`` shows them (options without a
#: panel come first, under "Options"). A method's own options go under "Method: NAME"
#: (:func:`method_panel`), right after "Method"; where an option goes follows from where it is
#: declared (:mod:`reidctl.cli.method_options`).
DATA, MODEL, CLUSTERING, METHOD, TRAINING, RUN, RUNTIME = (
    "Data", "Model", "Clustering", "Method", "Training", "Run", "Runtime")
PANELS = (DATA, MODEL, CLUSTERING, METHOD, TRAINING, RUN, RUNTIME)


def method_panel(methods: list[str]) -> str:
    """The panel of options that only ``methods`` (one method family) have: "Method: ncplr, gl-ncplr"."""
    return f"{METHOD}: {', '.join(methods)}"


def panel_rank(panel: str | None) -> float:
    """Where panel ``panel`` comes in ``--help`` (None, the plain "Options", first)."""
    if panel is None:
        return -1
    if panel in PANELS:
        return PANELS.index(panel)
    if panel.startswith(METHOD + ":"):
        return PANELS.index(METHOD) + 0.5
    return PANELS.index(RUN) - 0.5  # a command's own panel: before its run options


Data = Annotated[str, typer.Option("--data", help="Dataset folder, CSV manifest, or synthetic:tiny / synthetic:small.",
                                   rich_help_panel=DATA)]
# the layouts a path can be read as (not those selected by --data PREFIX:NAME), as registered
# when the commands are imported: a layout registered before that is listed too
DatasetName = Annotated[
    Optional[str],
    typer.Option("--dataset", help="Force a layout instead of detecting it "
                 f"({', '.join(name for name, layout in LAYOUTS.items() if not layout.prefix)}).", rich_help_panel=DATA),
]
Checkpoint = Annotated[Optional[Path], typer.Option("--checkpoint", help="A reidctl checkpoint (.pt) to take the model from.",
                                                    rich_help_panel=MODEL)]


@dataclass
class CommandOptions:
    """The run options that only the command line has (how a command reads and prints), beside
    the library's :class:`reidctl.runtime.Runtime` (device, precision, workers, seed ...): each
    command takes both by name (``runtime_flags("workers", "device", "json")``)."""

    batch_size: int | None = field(default=None, metadata=option(
        "Images per forward pass (default: 64 on a CPU, where smaller batches stay in cache; 256 with CUDA)."))
    skip_bad_images: bool = field(default=False, metadata=option(
        "Skip and count unreadable images instead of failing."))
    force: bool = field(default=False, metadata=option(
        "Overwrite an existing output (--out, --sheet) even when it holds something else than this command's "
        "kind of output (a photo, a file of another kind); an input is never overwritten."))
    json: bool = field(default=False, metadata=option("Print a machine-readable result on stdout."))
    # taken out of ``run`` by reidctl.cli.common.command, which holds reidctl.progress.quiet for the command
    quiet: bool = field(default=False, metadata=option(
        "No progress bars or progress lines on stderr (errors, warnings and results are still printed; a run "
        "folder's log.jsonl still gets its progress records).", aliases=("-q",)))


#: The help text of each shared runtime option, for commands that declare such a flag themselves.
RUNTIME_HELP = {name: info.help for cls in (Runtime, CommandOptions) for name, _, info in option_fields(cls)}
