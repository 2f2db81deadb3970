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
