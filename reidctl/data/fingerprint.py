"""A cheap digest of what a split holds, for the stage cache.

A cached stage must re-run when images are added, removed, replaced or relabelled, but reading
every image to hash it would cost minutes on a large dataset. The fingerprint hashes, per row,
the relative path, the file's size and modification time (nanoseconds) and the parsed pid and
camera: one ``stat`` per image (``bench/fingerprint.py``: 0.35 s per 100k images here).
An in-place edit that keeps both size and mtime goes unnoticed; ``--force-from extract`` is the
escape hatch for that.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

from reidctl.data.base import Sample

FINGERPRINT_VERSION = 1


def split_fingerprint(samples: Sequence[Sample]) -> str:
    """Digest of the rows of a split: relative paths, sizes, mtimes, pids and cameras."""
    h = hashlib.sha256(f"fingerprint-v{FINGERPRINT_VERSION}\n".encode())
    for s in samples:
        try:
            st = os.stat(s.path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # a dangling link or a vanished file: extraction will report it
            size, mtime = -1, -1
        h.update(f"{s.relpath}\0{size}\0{mtime}\0{s.pid}\0{s.camid}\n".encode())
    return h.hexdigest()[:32]
