"""Behaviour pins: `loop` runs whose labels and metrics must not change when code is refactored.

The runs are written as command lines (flat option names are part of the promise). Their
fingerprints were recorded with ``python -m tests.pins`` *before* the method plug-in refactor
(issue 12; pplr re-recorded when its stripes became disjoint, issue 14, the old fingerprint
kept as ``pplr_adaptive``) and live in ``tests/data/pins.json``; ``tests/test_pins.py`` re-runs them and compares.
Re-record only for a change that is meant to change results, and say so in CHANGELOG.md.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

PINS = Path(__file__).parent / "data" / "pins.json"
COMMON = ["--data", "synthetic:tiny", "--arch", "resnet18", "--height", "64", "--width", "32", "--k1", "6",
          "--k2", "2", "--min-samples", "3", "--iters", "2", "--batch-size", "8", "--num-instances", "4",
          "--bn-chunks", "2", "--eval-every", "1", "--workers", "0", "--device", "cpu", "--deterministic",
          "--epochs", "2", "--json"]
RUNS = {
    "cc": ["--method", "cc", "--eps", "0.5"],
    "pplr": ["--method", "pplr", "--eps", "0.5"],
    # the stripes as they were before disjoint stripes became the default (issue 14): the pin
    # recorded then must still hold
    "pplr_adaptive": ["--method", "pplr", "--eps", "0.5", "--part-split", "adaptive"],
    "icrefine": ["--method", "icrefine", "--n-clusters", "12", "--intra-epochs", "2", "--intra-iters", "2",
                 "--intra-clusters", "images/3"],
}


def labels_sha(path: Path, name: str = "labels") -> str:
    with h5py.File(path, "r") as f:
        return hashlib.sha256(np.asarray(f[name], dtype=np.int64).tobytes()).hexdigest()[:16]


def fingerprint(run_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """What must stay the same: every epoch's cluster and refined labels, loss and metrics."""
    epochs = []
    for rec in result["epochs"]:
        row: dict[str, Any] = {"epoch": rec["epoch"], "eval": {k: rec["eval"][k] for k in ("mAP", "rank1", "mINP")}}
        if rec["epoch"] != "init":
            folder = run_dir / f"epoch_{rec['epoch']:03d}"
            row.update(cluster=labels_sha(folder / "labels.h5"), refined=labels_sha(folder / "refined.h5"),
                       clusters=rec["refine"]["clusters"], outliers=rec["refine"]["outliers"],
                       loss=rec["train"]["loss"])
        epochs.append(row)
    out: dict[str, Any] = {"epochs": epochs}
    intra = run_dir / "intra" / "intra.h5"
    if intra.exists():
        out["intra"] = labels_sha(intra)
    return out


def run(method: str, run_dir: Path) -> dict[str, Any]:
    """Run one pinned loop in-process (the CLI, as a user types it) and fingerprint it."""
    from typer.testing import CliRunner

    from reidctl.cli.common import app

    res = CliRunner().invoke(app, ["loop", *COMMON, *RUNS[method], "--run-dir", str(run_dir)])
    if res.exit_code != 0 or res.exception is not None:
        raise RuntimeError(f"pinned run {method} failed: {res.output}") from res.exception
    return fingerprint(run_dir, json.loads(res.stdout))


if __name__ == "__main__":
    import tempfile

    import torch

    torch.set_num_threads(1)  # as the test runs them (results depend on the thread count)
    pins = json.loads(PINS.read_text()) if PINS.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:  # `python -m tests.pins pplr` re-records pplr alone
        pins.update({m: run(m, Path(tmp) / m) for m in (sys.argv[1:] or RUNS)})
    PINS.write_text(json.dumps(pins, indent=1) + "\n")
    print(json.dumps(pins, indent=1))
