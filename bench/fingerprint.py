"""Cost of the stage cache's dataset fingerprint on a large folder.

``loop`` keys every stage that reads images with a fingerprint of the split's content
(relative path, sha256 and parsed pid/camera of every image, :mod:`reidctl.data.fingerprint`),
remembered under a stat fingerprint (path, size, mtime). This script writes a Market-1501-style
folder of N tiny JPEG files (default 100,000 in the train split) and times, in one process,
median of ``--runs``:

* the floor: ``os.scandir`` of the folder plus one ``os.stat`` per file (what any change
  detection must at least do);
* ``load_dataset`` (the scan and file-name parsing every command already does);
* ``stat_fingerprint``: what every run pays once the split was seen (the fast path);
* ``content_fingerprint``: what the first sight of a split and ``loop --verify`` pay (reading
  and hashing every file; here tiny files, so it is the cost of opening them, not of bandwidth).

    python bench/fingerprint.py [--n 100000] [--runs 5] [--dir /tmp/reidctl-fp]

The folder is kept between invocations (``--dir``) so the file-writing cost is paid once.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

from PIL import Image

from reidctl.data.datasets import load_dataset
from reidctl.data.fingerprint import content_fingerprint, stat_fingerprint

from benchutil import timed  # noqa: E402  (bench/ is on sys.path when run as a script)

def tiny_jpeg() -> bytes:
    """A valid 1×1 grey JPEG (its content does not matter here)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (128, 128, 128)).save(buf, "JPEG")
    return buf.getvalue()


def make_folder(root: Path, n: int) -> None:
    """N train images named like Market-1501 (1,501 ids × 6 cameras), plus one query and gallery image."""
    marker = root / f".complete-{n}"
    if marker.exists():
        return
    jpeg = tiny_jpeg()
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / "bounding_box_train" / f"{i % 1501 + 1:04d}_c{i % 6 + 1}s1_{i:06d}_01.jpg").write_bytes(jpeg)
    (root / "query" / "0001_c1s1_000000_00.jpg").write_bytes(jpeg)
    (root / "bounding_box_test" / "0001_c2s1_000000_01.jpg").write_bytes(jpeg)
    marker.touch()


def floor(root: Path) -> int:
    count = 0
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        with os.scandir(root / sub) as it:
            for entry in it:
                os.stat(entry.path)
                count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/reidctl-fingerprint-bench"))
    args = ap.parse_args(argv)
    root = args.dir / f"market-{args.n}"
    t = time.perf_counter()
    make_folder(root, args.n)
    print(f"folder: {root} ({args.n:,} train images; prepared in {time.perf_counter() - t:.1f} s)", file=sys.stderr)
    t_floor, _ = timed(lambda: floor(root), args.runs)
    t_load, ds = timed(lambda: load_dataset(root, "market1501"), args.runs)
    t_fp, _ = timed(lambda: stat_fingerprint(ds.train), args.runs)  # type: ignore[union-attr]
    t_content, _ = timed(lambda: content_fingerprint(ds.train), args.runs)  # type: ignore[union-attr]
    print("| N | runs | floor scandir+stat (s) | load_dataset (s) | stat fingerprint (s) | stat / floor "
          "| content fingerprint (s) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.n:,} | {args.runs} | {t_floor:.3f} | {t_load:.3f} | {t_fp:.3f} | {t_fp / t_floor:.2f} "
          f"| {t_content:.3f} |")


if __name__ == "__main__":
    main()
