"""A run folder: its lock, its stage records and its JSON-lines log.

Each stage of ``loop`` writes its output into the run folder next to a ``STAGE.done.json``
record. The record holds

* ``key``: a digest of everything that can change the stage's output (its options, the seed,
  the digests of its input artifacts, a fingerprint of the images it reads, the reidctl
  version) and nothing else: no absolute path, no timing;
* ``output``: the output's path *relative to the run folder*, so a run folder can be moved or
  copied, and used from any working directory;
* ``digest``: the output's content digest, which later stages put in their keys;
* ``file``: the output's sha256, size and mtime when the stage finished.

A stage is skipped only when its record's key matches *and* its output is still what the stage
wrote: same size and mtime, or else the same sha256 (a copied run folder has new mtimes; the
hash check then refreshes the record). The size+mtime fast path trusts that a file whose size
and modification time (nanoseconds) are what the record says holds the bytes it held; with
``verify`` (``loop --verify``) every output is re-hashed instead. An output that was changed or removed since is reported
and the stage re-runs: the stage can re-create it, and a hand-edited artifact must never be
taken for the stage's own result. A record that cannot be read is treated as absent (and said
so). While a process works in a run folder it holds an exclusive lock on ``RUN/.lock``; the
operating system releases it when the process ends, however it ends.

``RUN/log.jsonl`` holds one JSON record a line, each with its ``time``: a stage that finished
(``epoch``, ``stage``, ``cached`` and its summary), a notice (``epoch``, ``stage``, ``notice``),
and, while a stage runs, its progress (``epoch``, ``stage``, ``progress``: the event of a
progress line, :mod:`reidctl.progress`).

Every write into a run folder replaces a symbolic link found at its name instead of writing
through it (records, results, ``summary.json``, ``config.toml``, stage outputs), and the lock
and the log, which are opened in place, refuse a link: a link planted in a run folder must never
send reidctl's writes onto a file elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from reidctl.version import __version__
from reidctl.artifacts import atomic_path, file_digest, os_reason
from reidctl.errors import ReidctlError
from reidctl.progress import activity, sink as progress_sink

log = logging.getLogger("reidctl")


def summary_notes(summary: Mapping[str, Any]) -> list[str]:
    """The sentences a stage's summary carries for its user, its ``*_note`` entries by name: a
    default the stage chose for the data's size (the kNN backend, the Jaccard bound). The loop
    and the stage commands say them."""
    return [str(summary[name]) for name in sorted(summary) if name.endswith("_note") and summary[name]]


Notice = Callable[[str], None]
RECORD_VERSION = 2
#: ``os.open`` flag that refuses a symbolic link (0 where the OS has none: then an lstat check).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def stage_key(stage: str, spec: Mapping[str, Any]) -> str:
    """The cache key of ``stage`` with ``spec`` (options, seed, input digests, fingerprints)."""
    body = {"stage": stage, "record_version": RECORD_VERSION, "reidctl_version": __version__, **spec}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class StageResult:
    """A stage's output as later stages use it."""

    path: Path  # absolute
    digest: str  # content digest (what downstream keys hold)
    summary: dict[str, Any]
    cached: bool
    pruned: bool = False  # the output was deleted by ``loop --keep`` (its record, digest and summary stay)


def refuse_pruned(inputs: Mapping[str, StageResult | None], stage: str) -> None:
    """A stage that must run cannot read an input that ``loop --keep`` deleted."""
    for result in inputs.values():
        if result is not None and result.pruned:
            raise ReidctlError(f"the {stage} stage must run again, but its input {result.path} was deleted by "
                               "--keep; re-run every epoch with --force-from extract, or use a new --run-dir")


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically (records, eval.json, summary.json), replacing a link at
    ``path`` rather than writing through it."""
    with atomic_path(path, replace_link=True) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=str))
    return path


def _file_state(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"sha256": file_digest(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class RunLock:
    """An exclusive, non-blocking lock on ``RUN/.lock`` (``flock``; ``msvcrt`` on Windows)."""

    def __init__(self, root: Path) -> None:
        self.path = root / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = open_no_link(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise ReidctlError(f"--run-dir {self.path.parent}: cannot create its lock file ({exc.strerror})") from None
        if not _try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise ReidctlError(f"--run-dir {self.path.parent} is in use by another reidctl process{holder}; "
                               "wait for it to finish, or use another --run-dir")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 "argv": sys.argv}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None


def open_no_link(path: Path, flags: int) -> int:
    """``os.open(path, flags)`` that refuses a symbolic link at ``path`` (a run folder's lock and
    log are written in place: through a link they would truncate or grow a file elsewhere)."""
    if not os.path.islink(path):
        try:
            return os.open(path, flags | _NOFOLLOW, 0o666)
        except OSError:
            if not os.path.islink(path):  # else: made between the check and the open (ELOOP)
                raise
    raise ReidctlError(f"{path} is a symbolic link; reidctl does not write through links in a run folder "
                       "(delete the link)")


def _try_lock(fd: int) -> bool:
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:  # Windows
        import msvcrt  # noqa: PLC0415

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(fd: int) -> None:
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:
        import msvcrt  # noqa: PLC0415

        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError, KeyError, AttributeError):  # no os.pread on Windows
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f" (pid {info['pid']}, since {info['since']})"
    return ""


class RunDir:
    """The run folder of ``loop``: use as a context manager (it holds the lock inside)."""

    def __init__(self, root: str | os.PathLike, *, stages: tuple[str, ...], force_from: str | None = None,
                 notice: Notice | None = None, verify: bool = False) -> None:
        if force_from is not None and force_from not in stages:
            raise ReidctlError(f"--force-from {force_from}: choose one of {', '.join(stages)}")
        self.root = Path(root).expanduser().absolute()
        self.forced = set(stages[stages.index(force_from):]) if force_from else set()
        self.log_path = self.root / "log.jsonl"
        self.notice = notice or log.warning
        self.verify = verify  # re-hash every output instead of trusting its size and mtime
        self._lock = RunLock(self.root)

    def __enter__(self) -> RunDir:
        if self.root.exists() and not self.root.is_dir():
            raise ReidctlError(f"--run-dir {self.root} is a file, not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReidctlError(f"--run-dir {self.root}: cannot create it ({os_reason(exc, self.root)})") from None
        self._lock.acquire()
        try:
            for stale in self.root.rglob(".*.tmp"):  # left by a stage killed mid-write; we hold the lock
                stale.unlink(missing_ok=True)
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()

    def log(self, record: Mapping[str, Any]) -> None:
        try:
            with os.fdopen(open_no_link(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a") as f:
                f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise ReidctlError(f"cannot write {self.log_path}: {exc.strerror}") from None

    def stage(self, folder: str, stage: str, out_name: str, key: str,
              run: Callable[[Path], dict[str, Any]], digest: Callable[[Path], str], epoch: int | str,
              group: str | None = None) -> StageResult:
        """Run ``run(out_path)`` unless a valid record says its output is already there.

        ``digest(out_path)`` is the output's content digest, recorded for later stages' keys;
        ``group`` is the name ``--force-from`` knows the stage by (default: ``stage``).
        """
        out_rel = f"{folder}/{out_name}"
        out = self.root / out_rel
        record_path = self.root / folder / f"{stage}.done.json"
        record = self._read_record(record_path, stage, epoch)
        if (group or stage) in self.forced:
            record = None
        if record is not None and record.get("key") == key:
            if record.get("pruned") and not out.exists():
                self.log({"epoch": epoch, "stage": stage, "cached": True, "pruned": True, **record["summary"]})
                return StageResult(out, record["digest"], record["summary"], cached=True, pruned=True)
            problem = self._check_output(out, record, record_path, verify=self.verify)
            if problem is None:
                self.log({"epoch": epoch, "stage": stage, "cached": True, **record["summary"]})
                return StageResult(out, record["digest"], record["summary"], cached=True)
            self._say(f"{out}: {problem}; running the {stage} stage again", epoch, stage)
        replace_links(out)
        t0 = time.perf_counter()
        # the stage's progress lines (reidctl.progress) go to the log too, as {"progress": {...}}
        with progress_sink(lambda event: self.log({"epoch": epoch, "stage": stage, "progress": event})), \
                activity(f"{stage} (epoch {epoch})"):
            summary = run(out)
        summary = {**summary, "seconds": round(time.perf_counter() - t0, 2)}
        for note in summary_notes(summary):
            self._say(note, epoch, stage)
        record = {"key": key, "output": out_rel, "digest": digest(out), "file": _file_state(out),
                  "summary": summary, "record_version": RECORD_VERSION}
        write_json(record_path, record)
        self.log({"epoch": epoch, "stage": stage, "cached": False, **summary})
        return StageResult(out, record["digest"], summary, cached=False)

    def prune(self, folder: str) -> list[Path]:
        """Delete the artifacts of ``folder`` (``loop --keep``): every file but the JSON records
        and results. Its stage records stay, marked ``pruned``, so later epochs stay cached; a stage
        that must read a pruned artifact is refused (:func:`refuse_pruned`)."""
        base = self.root / folder
        records = sorted(base.glob("*.done.json"))
        for path in records:
            record = json.loads(path.read_text())
            if not record.get("pruned"):
                write_json(path, {**record, "pruned": True})
        removed = [p for p in sorted(base.iterdir()) if p.is_file() and p.suffix != ".json"]
        for path in removed:
            path.unlink()
        return removed

    def _say(self, message: str, epoch: int | str, stage: str) -> None:
        self.notice(message)
        self.log({"epoch": epoch, "stage": stage, "notice": message})

    def _read_record(self, path: Path, stage: str, epoch: int | str) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or not all(k in record for k in ("key", "digest", "file", "summary")):
                raise ValueError("fields are missing")
            return record
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self._say(f"{path}: unreadable stage record ({exc}); treating the stage as not run", epoch, stage)
            return None

    @staticmethod
    def _check_output(out: Path, record: dict[str, Any], record_path: Path, *, verify: bool = False) -> str | None:
        """None when ``out`` is what the stage wrote, else what is wrong with it (``verify``:
        its bytes are hashed even when its size and mtime are those of the record)."""
        if not out.is_file():
            return "the output of a finished stage is missing"
        want = record["file"]
        st = out.stat()
        if not verify and st.st_size == want.get("size") and st.st_mtime_ns == want.get("mtime_ns"):
            return None
        if file_digest(out) != want.get("sha256"):
            return "changed since the stage wrote it (its sha256 differs from the stage record)"
        record["file"] = {**want, "size": st.st_size, "mtime_ns": st.st_mtime_ns}  # same bytes, new mtime
        write_json(record_path, record)
        return None


def replace_links(out: Path) -> None:
    """Remove symbolic links where a stage is about to write ``out`` and its companions
    (``model.pt``, ``model.state.h5``): the stage then writes files of its own, never through a
    link onto a file outside the run folder."""
    for path in (out, *out.parent.glob(f"{out.stem}.*")):
        if path.is_symlink():
            path.unlink()
