"""Tiny Market-style folders whose identities are colours (a random network separates them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _img(path: Path, colour, rng: np.random.Generator, size=(32, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = rng.integers(-20, 20, (*size, 3))
    Image.fromarray(np.clip(np.array(colour)[None, None] + noise, 0, 255).astype(np.uint8)).save(path)


def colour(pid: int) -> list[int]:
    return [(pid * 67) % 256, (pid * 151) % 256, (pid * 29) % 256]


def colour_market(root: Path, train_ids: int = 6, test_ids: int = 4, per_camera: int = 3, cams: int = 2,
                  distractor: bool = True) -> Path:
    """Train ids 1..train_ids, test ids after them: one query per id (camera 1), the rest gallery."""
    rng = np.random.default_rng(0)
    for pid in range(1, train_ids + test_ids + 1):
        for cam in range(1, cams + 1):
            for k in range(per_camera):
                name = f"{pid:04d}_c{cam}s1_{k:06d}_01.jpg"
                if pid <= train_ids:
                    _img(root / "bounding_box_train" / name, colour(pid), rng)
                elif cam == 1 and k == 0:
                    _img(root / "query" / name.replace("_01.jpg", "_00.jpg"), colour(pid), rng)
                else:
                    _img(root / "bounding_box_test" / name, colour(pid), rng)
    if distractor:
        _img(root / "bounding_box_test" / "0000_c1s1_000099_01.jpg", (0, 0, 0), rng)
    return root


def named_market(root: Path, train_ids: int = 751, per_id: int = 17, test_ids: int = 10, cams: int = 6) -> Path:
    """A Market-1501 folder of Market's size (751 × 17 = 12,767 train images) whose files are empty:
    enough to resolve options that depend on the number of images (icrefine's clusters), never
    read as images."""
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for pid in range(1, train_ids + 1):
        for k in range(per_id):
            (root / "bounding_box_train" / f"{pid:04d}_c{k % cams + 1}s1_{k:06d}_01.jpg").touch()
    for pid in range(train_ids + 1, train_ids + test_ids + 1):
        (root / "query" / f"{pid:04d}_c1s1_000000_00.jpg").touch()
        for cam in range(2, cams + 1):
            (root / "bounding_box_test" / f"{pid:04d}_c{cam}s1_000000_01.jpg").touch()
    return root


def named_msmt_lists(root: Path, train_ids: int = 4, test_ids: int = 4, cams: int = 2) -> Path:
    """An MSMT17 list layout (train/, test/, list_*.txt) of empty files: a labelled source to resolve
    MAR's options with, never read as images."""
    lists: dict[str, list[str]] = {"list_train.txt": [], "list_val.txt": [], "list_query.txt": [],
                                   "list_gallery.txt": []}
    for split, folder, ids in (("train", "train", train_ids), ("test", "test", test_ids)):
        for pid in range(ids):
            for k in range(2 * cams):
                rel = f"{pid:04d}/{pid:04d}_{k:03d}_{k % cams + 1:02d}_0303morning_{k:04d}_0.jpg"
                (root / folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / folder / rel).touch()
                target = ("list_train.txt" if k else "list_val.txt") if split == "train" else (
                    "list_query.txt" if k == 0 else "list_gallery.txt")
                lists[target].append(f"{rel} {pid}")
    for name, lines in lists.items():
        (root / name).write_text("\n".join(lines) + "\n")
    return root
