"""Write the true identities of a labelled train split as a pseudo-labels file (a diagnostic).

usage: python examples/oracle_labels.py DATA OUT.h5 [--per-camera]

Training on them (`reidctl train-epoch --labels OUT.h5 ...`, epoch after epoch) is the method's
recipe with perfect clusters: if that run also loses ground, the loss comes from the recipe (the
learning rate, the BatchNorm statistics, the augmentation), not from the pseudo labels.
`--per-camera` splits each identity into one label per camera: clusters just as pure, but none
spanning two cameras, as an early model's clustering tends to make them; the pair of runs
separates what impurity costs from what single-camera clusters cost. No
reidctl stage reads a dataset's identities to train; this script is the one place that does, for
that comparison only (docs/uda.md). Rows follow the train split's order, as `extract` writes
them; identities are numbered 0..K-1 in ascending order of the dataset's own numbers.
"""

from __future__ import annotations

import sys

import numpy as np

from reidctl.artifacts import write_labels
from reidctl.data.datasets import load_dataset


def oracle_labels(data: str, per_camera: bool = False) -> tuple[np.ndarray, list[str]]:
    """The train split's identities (or (identity, camera) pairs) as labels 0..K-1, and its row
    keys (relative paths)."""
    train = load_dataset(data).train
    pids = np.array([s.pid for s in train])
    if len(train) == 0 or (pids < 0).any():
        raise SystemExit(f"error: {data}: the train split has images without identities")
    keys = np.stack([pids, np.array([s.camid for s in train])], 1) if per_camera else pids[:, None]
    if per_camera and (keys[:, 1] < 0).any():
        raise SystemExit(f"error: {data}: --per-camera needs camera ids, and some train images have none")
    _, labels = np.unique(keys, axis=0, return_inverse=True)
    return labels.reshape(-1).astype(np.int32), [s.relpath for s in train]


def main(argv: list[str]) -> int:
    per_camera = "--per-camera" in argv
    argv = [a for a in argv if a != "--per-camera"]
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    labels, paths = oracle_labels(argv[0], per_camera)
    write_labels(argv[1], labels, paths=paths, params={"stage": "oracle", "data": argv[0], "per_camera": per_camera})
    print(f"{argv[1]}: {len(paths)} rows, {labels.max() + 1} identities")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
