"""`reidctl synth`: write the built-in synthetic dataset (Market-1501 layout) to a folder."""

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from reidctl.cli.common import app, err_console, out_console, print_json, user_errors
from reidctl.cli.options import RUNTIME, RUNTIME_HELP
from reidctl.data.synthetic import check_jobs, write_synthetic
from reidctl.errors import DatasetError


def _range(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not m:
        raise DatasetError(f"--images-per-camera must be N or MIN-MAX (got '{text}')")
    lo = int(m.group(1))
    return lo, int(m.group(2) or lo)


@app.command("synth")
@user_errors
def synth(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to create; it gets bounding_box_train/, query/ and bounding_box_test/.")],
    ids: Annotated[int, typer.Option(help="Identities in total (train + test, disjoint).")] = 100,
    cams: Annotated[int, typer.Option(help="Cameras (2-9); each identity is seen by at least two.")] = 4,
    seed: Annotated[int, typer.Option(help=RUNTIME_HELP["seed"], rich_help_panel=RUNTIME)] = 1,
    height: Annotated[int, typer.Option(help="Image height in pixels.")] = 128,
    width: Annotated[int, typer.Option(help="Image width in pixels.")] = 64,
    images_per_camera: Annotated[str, typer.Option(help="Images of an identity per camera: N or MIN-MAX (MIN >= 2).")] = "2-4",
    test_fraction: Annotated[float, typer.Option(help="Share of the identities that go to query + gallery.")] = 0.5,
    jobs: Annotated[int | None, typer.Option("--jobs", help="Processes that draw images (default: one per CPU for large sets).",
                                             rich_help_panel=RUNTIME)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it holds a dataset written by `reidctl synth`.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help=RUNTIME_HELP["json"], rich_help_panel=RUNTIME)] = False,
) -> None:
    """Write a synthetic re-ID dataset: drawn pedestrians, cameras with their own look.

    The same seed writes byte-identical files."""
    check_jobs(jobs, "--jobs")
    kwargs = dict(height=height, width=width, images_per_camera=_range(images_per_camera),
                  test_fraction=test_fraction, overwrite=force, workers=jobs)
    if err_console.is_terminal and not json_out:
        columns = (TextColumn("drawing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task("synth", total=None)
            summary = write_synthetic(out, ids, cams, seed, **kwargs,
                                      progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        summary = write_synthetic(out, ids, cams, seed, **kwargs)
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"synthetic dataset in {summary['root']}", title_justify="left")
    for col in ("split", "folder", "images", "identities"):
        table.add_column(col, justify="left" if col in ("split", "folder") else "right")
    images, n_ids = summary["images"], summary["ids"]
    table.add_row("train", "bounding_box_train", str(images["train"]), str(n_ids["train"]))
    table.add_row("query", "query", str(images["query"]), str(n_ids["test"]))
    table.add_row("gallery", "bounding_box_test", str(images["gallery"]), str(n_ids["test"]))
    out_console.print(table)
    out_console.print(f"{summary['cameras']} cameras, seed {seed}; the gallery also holds "
                      f"{summary['distractors']} distractors (pid 0000) and {summary['junk']} junk images (pid -1)")
