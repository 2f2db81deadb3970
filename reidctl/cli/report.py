"""`reidctl report`: pictures of `loop` runs (PNG or HTML, optionally TensorBoard), to compare them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from reidctl.cli.common import command, err_console, notice, print_json
from reidctl.cli.method_options import runtime_flags
from reidctl.reporting.report import (output_path, read_runs, summary_writer_class, tensorboard_folders, write_report,
                            write_tensorboard)


@command("report", run=runtime_flags("force", "json"))
def report(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIRS", help="`loop` run folders (each holds summary.json); several "
                                                        "are overlaid, one colour each.")],
    out: Annotated[Optional[Path], typer.Option("--out", help=(
        "report.png (the figure) or report.html (figure and per-epoch tables in one file). Default: "
        "RUN_DIR/report.png for one run; required for several."))] = None,
    tensorboard: Annotated[Optional[Path], typer.Option("--tensorboard", help=(
        "Also write the series as TensorBoard scalars, one sub-folder per run (needs the tensorboard "
        "package: pip install 'reidctl[tensorboard]')."))] = None,
    run: dict = None,  # how it runs (reidctl.runtime.Runtime, reidctl.cli.options.CommandOptions)
) -> None:
    """Draw runs per epoch: (a) mAP and rank-1, (b) pseudo-label F and NMI against ground truth,
    (c) clusters, outliers and multi-camera clusters, (d) the training loss per iteration."""
    target = output_path(run_dirs, out, force=run["force"])
    runs = read_runs(run_dirs)
    notes = [note for r in runs for note in r.notes]
    for note in notes:
        notice(f"note: {note}")
    if tensorboard is not None:  # refuse before anything is written
        summary_writer_class()
        tensorboard_folders(runs, tensorboard)
    result = write_report(runs, target)
    if tensorboard is not None:
        result["tensorboard"] = [str(p) for p in write_tensorboard(runs, tensorboard)]
    if run["json"]:
        print_json(result | {"tables": {r.label: r.table() for r in runs}, "notes": notes})
        return
    w, h = result["size"]
    err_console.print(f"wrote {target} ({len(runs)} run{'s' if len(runs) > 1 else ''}, figure {w}×{h} px)"
                      + (f"; TensorBoard scalars under {tensorboard}" if tensorboard is not None else ""),
                      highlight=False)
