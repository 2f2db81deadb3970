"""Progress of long steps on stderr: a rich bar on a terminal, plain lines in a log.

:func:`progress_bar` wraps a step of known length (extract, kNN, Jaccard, a train epoch, an
evaluation ...). On an interactive stderr it draws a transient rich bar, as it always did. When
stderr is not a terminal (``> log 2>&1``, a pipe, nohup, CI) it writes plain lines instead, as
fast-reid's log does::

    train epoch 3: 40/200 (20%) 1.9 it/s, ETA 1:24, loss 3.412

A line is written when 10 % more of the step is done or when 30 s passed since the last line,
whichever comes first, once the step has run for a second (a step shorter than that stays
silent); a step that wrote a line ends with one at 100 %. The rate and the ETA are averages
since the step began; ``loss`` appears where the caller passes one (``advance(1, loss=...)``: a
number, a 0-d tensor or a function returning one, converted only when a line is due, so a
training step costs no device sync).

Two settings hold for the duration of a command (the CLI sets them; a notebook may too):

* :func:`quiet` (``--quiet``): no bars and no lines; the events still reach the sinks;
* :func:`sink`: a receiver of every progress event, as a dict (``step``, ``done``, ``total``,
  ``unit``, ``rate``, ``eta_s``, ``elapsed_s``, ``loss``), at the cadence of the lines and
  whether or not stderr is a terminal. ``loop`` registers one per stage that writes the events
  to the run folder's ``log.jsonl``.

Under ``torchrun`` only rank 0 (torchrun's ``RANK``) reports. Lines never go to stdout, which
carries ``--json`` and tables.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

#: A line each time this fraction more of a step is done ...
EVERY = 0.1
#: ... or when this many seconds passed since the last line, whichever comes first ...
HEARTBEAT_S = 30.0
#: ... once the step has run this long (shorter steps write nothing).
GRACE_S = 1.0

Sink = Callable[[dict[str, Any]], None]

_quiet = False
_sinks: list[Sink] = []


class Advance(Protocol):
    """What :func:`progress_bar` yields: ``advance(n)`` after ``n`` more units of work, with the
    current ``loss`` where there is one (a number, a 0-d tensor, or a function returning one)."""

    def __call__(self, n: int = 1, *, loss: Any = None) -> None: ...


def _noop(n: int = 1, *, loss: Any = None) -> None:
    return None


# ------------------------------------------------------------------------------------ settings


def set_quiet(on: bool) -> None:
    """Silence (or restore) progress bars and lines on stderr; sinks still receive the events."""
    global _quiet
    _quiet = bool(on)


def is_quiet() -> bool:
    return _quiet


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """``--quiet`` for the duration of the block (the previous setting comes back after it)."""
    before = _quiet
    set_quiet(on)
    try:
        yield
    finally:
        set_quiet(before)


@contextlib.contextmanager
def sink(receiver: Sink) -> Iterator[Sink]:
    """Send every progress event of the block to ``receiver`` too (e.g. a run folder's log)."""
    _sinks.append(receiver)
    try:
        yield receiver
    finally:
        _sinks.remove(receiver)


def _main_process() -> bool:
    """Rank 0 under torchrun, or a single process."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def _write_line(line: str) -> None:
    global _last_line
    with _write_lock:
        stream = sys.stderr  # looked up now: a test runner may have replaced it
        stream.write(line + "\n")
        stream.flush()
        _last_line = time.monotonic()


# ------------------------------------------------------------------------------- heartbeat

_write_lock = threading.Lock()
_last_line = time.monotonic()  # when the last plain line was written (any step, any thread)
_activities: list[tuple[str, float]] = []  # (name, start) of the work under way, innermost last
_beat: threading.Event | None = None  # set to stop the heartbeat thread


@contextlib.contextmanager
def activity(name: str) -> Iterator[None]:
    """Work that may run long without a progress line of its own (a stage of ``loop``, a command:
    DBSCAN, average linkage, one slow training step ...). While it runs and stderr is not a
    terminal, a line ``NAME: still running, M:SS so far`` is written whenever no line was written
    for ``HEARTBEAT_S``, so a log never goes quiet for longer than that. Nested activities share
    one heartbeat thread, which names the innermost."""
    if _quiet or sys.stderr.isatty() or not _main_process():
        yield
        return
    global _beat, _last_line
    _activities.append((name, time.monotonic()))
    first = _beat is None
    if first:
        _last_line = time.monotonic()  # the heartbeat counts from the start of the work
        _beat = threading.Event()
        thread = threading.Thread(target=_heartbeat, args=(_beat,), name="reidctl-heartbeat", daemon=True)
        thread.start()
    try:
        yield
    finally:
        _activities.pop()
        if first:
            _beat.set()
            thread.join()
            _beat = None


def _heartbeat(stop: threading.Event) -> None:
    while not stop.wait(min(1.0, HEARTBEAT_S / 4)):
        now, under_way = time.monotonic(), list(_activities)  # a copy: the main thread pushes and pops
        if now - _last_line >= HEARTBEAT_S and under_way:
            name, start = under_way[-1]
            _write_line(f"{name}: still running, {format_clock(now - start)} so far")


# ------------------------------------------------------------------------------------ lines


class Reporter:
    """The rate limit of the plain lines: feed it ``advance(n)``; it calls ``write(line)`` (when
    given) and the sinks when a line is due. ``clock`` is injectable for tests."""

    def __init__(self, step: str, total: int, *, unit: str = "it", write: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, every: float | None = None,
                 heartbeat_s: float | None = None, grace_s: float | None = None) -> None:
        self.step, self.total, self.unit, self.write, self.clock = step, int(total), unit, write, clock
        self.every = EVERY if every is None else every
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.grace_s = GRACE_S if grace_s is None else grace_s
        self.start = self.last_time = clock()
        self.done = self.last_done = 0
        self.lines = 0
        self._loss: Any = None

    def advance(self, n: int = 1, *, loss: Any = None) -> None:
        self.done += n
        if loss is not None:
            self._loss = loss
        now = self.clock()
        if self._due(now):
            self._emit(now)

    def close(self) -> None:
        """The step ended: a last line at 100 % unless the last one said so, or it was too short."""
        now = self.clock()
        if self.done > self.last_done and now - self.start >= self.grace_s:
            self._emit(now)

    def _due(self, now: float) -> bool:
        if now - self.last_time >= self.heartbeat_s:
            return True
        return now - self.start >= self.grace_s and self.done - self.last_done >= self.every * self.total

    def _emit(self, now: float) -> None:
        event = self.event(now)
        self.last_time, self.last_done = now, self.done
        self.lines += 1
        if self.write is not None:
            self.write(format_line(event))
        for receiver in list(_sinks):
            receiver(dict(event))

    def event(self, now: float) -> dict[str, Any]:
        """What a line says, as numbers: rate and ETA are averages since the step began."""
        elapsed = max(now - self.start, 0.0)
        rate = self.done / elapsed if elapsed > 0 else None
        eta = max(self.total - self.done, 0) / rate if rate else None
        event: dict[str, Any] = {"step": self.step, "done": self.done, "total": self.total, "unit": self.unit,
                                 "rate": None if rate is None else float(f"{rate:.4g}"),
                                 "eta_s": None if eta is None else round(eta, 1), "elapsed_s": round(elapsed, 1)}
        loss = _number(self._loss)
        if loss is not None:
            event["loss"] = float(f"{loss:.6g}")
        return event


def _number(value: Any) -> float | None:
    """A loss given as a number, a 0-d tensor or a function of none (evaluated now, not before)."""
    if value is None:
        return None
    if callable(value):
        value = value()
    if hasattr(value, "item"):
        value = value.item()  # a device sync, once per line
    return float(value)


def format_line(event: Mapping[str, Any]) -> str:
    """``train epoch 3: 40/200 (20%) 1.9 it/s, ETA 1:24, loss 3.412`` (``took 2:05`` at the end)."""
    done, total = event["done"], event["total"]
    pct = math.floor(100 * done / total) if total else 100
    parts = [f"{event['step']}: {done}/{total} ({pct}%) {format_rate(event['rate'], event['unit'])}"]
    if done >= total:
        parts.append(f"took {format_clock(event['elapsed_s'])}")
    elif event.get("eta_s") is not None:
        parts.append(f"ETA {format_clock(event['eta_s'])}")
    if event.get("loss") is not None:
        parts.append(f"loss {event['loss']:.3f}")
    return ", ".join(parts)


def format_rate(rate: float | None, unit: str) -> str:
    """``1.9 it/s``; below one per second, ``4.2 s/it``."""
    if rate is None:
        return f"? {unit}/s"
    if 0 < rate < 1:
        return f"{1 / rate:.1f} s/{unit}"
    return f"{rate:.1f} {unit}/s"


def format_clock(seconds: float) -> str:
    """``1:24``, ``1:02:03``."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def report(line: str, event: Mapping[str, Any]) -> None:
    """A line of its own, not a bar's (``pretrain``'s line per epoch): on stderr unless quiet,
    on a terminal as in a log, and ``event`` to the sinks. Rank 0 only."""
    if not _main_process():
        return
    if not _quiet:
        _write_line(line)
    for receiver in list(_sinks):
        receiver(dict(event))


# ------------------------------------------------------------------------------------ bars


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool | None = None, *, unit: str = "it") -> Iterator[Advance]:
    """Yield ``advance(n, loss=None)`` for a step of ``total`` units.

    ``enabled``: None (the default) reports on rank 0 only, as a rich bar on an interactive
    stderr and as plain lines otherwise; True draws the bar anyway; False reports nothing (the
    other ranks). ``--quiet`` (:func:`quiet`) leaves out the bar and the lines.
    """
    if enabled is False or (enabled is None and not _main_process()) or total <= 0:
        yield _noop
        return
    bar = not _quiet and (enabled is True or sys.stderr.isatty())
    lines = not _quiet and not bar
    reporter = Reporter(description, total, unit=unit, write=_write_line if lines else None) \
        if lines or _sinks else None
    if not bar:
        yield _noop if reporter is None else reporter.advance
        if reporter is not None:
            reporter.close()
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: int = 1, *, loss: Any = None) -> None:
            progress.advance(task, n)
            if reporter is not None:
                reporter.advance(n, loss=loss)

        yield advance
    if reporter is not None:
        reporter.close()


def callback(advance: Advance) -> Callable[[int, int], None]:
    """Adapt ``advance`` to library progress hooks of the form ``hook(done, total)``."""
    state = {"done": 0}

    def hook(done: int, total: int) -> None:
        advance(done - state["done"])
        state["done"] = done

    return hook
