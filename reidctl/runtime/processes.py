"""How many worker processes this machine can use: one bound for ``--workers`` (DataLoader
loaders) and ``synth --jobs`` (drawing processes).

Why a bound at all: a mistyped ``--workers 1000`` forks a thousand processes, each with its copy
of the dataset's index and a share of memory, before any of them does useful work; beyond a few
per CPU more processes only compete for the same cores.
"""

from __future__ import annotations

import os

from reidctl.errors import ReidctlError

#: Worker processes per CPU beyond which more only cost memory and forks.
MAX_PROCESSES_PER_CPU = 4


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def process_limit() -> int:
    """The most worker processes worth starting: :data:`MAX_PROCESSES_PER_CPU` per CPU, at least 8."""
    return max(8, MAX_PROCESSES_PER_CPU * usable_cpus())


def check_process_count(processes: int | None, flag: str) -> None:
    """Refuse more worker processes than :func:`process_limit`, in one line (``flag``: how the
    option is spelt, ``--workers`` or ``--jobs``)."""
    if processes is not None and processes > process_limit():
        raise ReidctlError(f"{flag} {processes} is more than this machine can use: at most {process_limit()} "
                           f"({MAX_PROCESSES_PER_CPU} per CPU, {usable_cpus()} CPUs)")


def check_loader_options(batch_size: int | None, workers: int | None, *, batch_flag: str = "--batch-size") -> None:
    """Refuse a batch size below 1, a negative worker count or more workers than the machine can
    use (one ``error:`` line, not a usage box)."""
    if batch_size is not None and batch_size < 1:
        raise ReidctlError(f"{batch_flag} must be at least 1 (got {batch_size})")
    if workers is not None and workers < 0:
        raise ReidctlError(f"--workers must be 0 (load in the main process) or more (got {workers})")
    check_process_count(workers, "--workers")
