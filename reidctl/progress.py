"""Rich progress bars on stderr, silent when stderr is not a terminal (scripts, CI, tests)."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Advance = Callable[[int], None]


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool | None = None) -> Iterator[Advance]:
    """Yield ``advance(n)``; draws a bar only on an interactive stderr (or when ``enabled``)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n=1: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def callback(advance: Advance) -> Callable[[int, int], None]:
    """Adapt ``advance`` to library progress hooks of the form ``hook(done, total)``."""
    state = {"done": 0}

    def hook(done: int, total: int) -> None:
        advance(done - state["done"])
        state["done"] = done

    return hook
