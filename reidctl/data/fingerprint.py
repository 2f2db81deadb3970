"""A digest of what a split holds, for the stage cache: the images' content, found fast.

A cached stage must re-run when images are added, removed, replaced, edited or relabelled. The
fingerprint is a digest of the images' *bytes* (per row: the relative path, the sha256 of the
file, the parsed pid and camera), so copies of a dataset elsewhere (new mtimes) keep their
fingerprint and any change to a picture changes it.

Hashing every image on every command would cost seconds to minutes on a large dataset, so the
content fingerprint is remembered under the split's *stat fingerprint* (per row: the relative
path, the file's size and modification time in nanoseconds, the pid and the camera; one
``stat`` per image, ``bench/fingerprint.py``: 0.35 s per 100k images here), in this process and
in ``$REIDCTL_CACHE/fingerprints/``. The images are read and hashed on first sight of a stat
fingerprint (any added, removed, resized or touched file gives a new one).

What the fast path trusts: that a file whose size and mtime are unchanged holds the same bytes.
An in-place edit that keeps both (a tool that restores the mtime) goes unnoticed; ``verify``
(``loop --verify``) re-reads and re-hashes every image instead, and remembers the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator, Sequence

from reidctl.data.base import Sample

FINGERPRINT_VERSION = 2  # 2: the images' content (1: size and mtime only)

_MEMO: dict[str, str] = {}  # stat fingerprint → content fingerprint, in this process
#: Under :func:`verifying`: the stat fingerprints re-hashed so far (each split once per run).
_VERIFYING: ContextVar[set[str] | None] = ContextVar("reidctl_fingerprint_verify", default=None)


@contextlib.contextmanager
def verifying(on: bool = True) -> Iterator[None]:
    """While inside, every :func:`split_fingerprint` re-hashes its images (once per split), as
    ``loop --verify`` asks, instead of trusting sizes and modification times."""
    token = _VERIFYING.set(set() if on else None)
    try:
        yield
    finally:
        _VERIFYING.reset(token)


def split_fingerprint(samples: Sequence[Sample], *, verify: bool = False) -> str:
    """Digest of the rows of a split: relative paths, the images' content, pids and cameras.

    Remembered by the split's stat fingerprint (see the module's doc); ``verify`` (or an
    enclosing :func:`verifying`) re-hashes the images instead of trusting what was remembered."""
    by_stat = stat_fingerprint(samples)
    verified = _VERIFYING.get()
    rehash = verify or (verified is not None and by_stat not in verified)
    content = None if rehash else (_MEMO.get(by_stat) or _recall(by_stat))
    if content is None:  # first sight, or a re-hash: read the images, and remember what they hold
        content = content_fingerprint(samples)
        _remember(by_stat, content)
        if verified is not None:
            verified.add(by_stat)
    _MEMO[by_stat] = content
    return content


def stat_fingerprint(samples: Sequence[Sample]) -> str:
    """Digest of relative paths, sizes, mtimes, pids and cameras: one ``stat`` per image."""
    h = hashlib.sha256(f"stat-v{FINGERPRINT_VERSION}\n".encode())
    for s in samples:
        try:
            st = os.stat(s.path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # a dangling link or a vanished file: extraction will report it
            size, mtime = -1, -1
        h.update(f"{s.relpath}\0{size}\0{mtime}\0{s.pid}\0{s.camid}\n".encode())
    return h.hexdigest()[:32]


def content_fingerprint(samples: Sequence[Sample]) -> str:
    """Digest of relative paths, the sha256 of every image file, pids and cameras."""
    h = hashlib.sha256(f"content-v{FINGERPRINT_VERSION}\n".encode())
    for s in samples:
        h.update(f"{s.relpath}\0{_file_sha(s.path)}\0{s.pid}\0{s.camid}\n".encode())
    return h.hexdigest()[:32]


def _file_sha(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:  # unreadable or gone: extraction will report it
        return "unreadable"
    return h.hexdigest()


def _memo_path(by_stat: str) -> Path:
    from reidctl.data.synthetic import cache_dir  # the cache folder's one definition

    return cache_dir() / "fingerprints" / f"{by_stat}-v{FINGERPRINT_VERSION}.json"


def _recall(by_stat: str) -> str | None:
    try:
        stored = json.loads(_memo_path(by_stat).read_text())
        return str(stored["content"]) if stored.get("stat") == by_stat else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _remember(by_stat: str, content: str) -> None:
    """Write the memo atomically; a cache that cannot be written is only a lost speed-up."""
    from reidctl.artifacts import ArtifactError, atomic_path

    if _recall(by_stat) == content:
        return
    with contextlib.suppress(ArtifactError), atomic_path(_memo_path(by_stat)) as tmp:
        tmp.write_text(json.dumps({"stat": by_stat, "content": content}))
