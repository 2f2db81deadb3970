"""Behaviour pins: `loop` runs whose labels and metrics must not change when code is refactored,
on any machine.

The runs are written as command lines (flat option names are part of the promise). Each epoch's
cluster and refined labels, cluster counts and outliers (MAR, which does not cluster: the pairs it
mined) are compared **exactly**; every loss
(the epoch's mean and each step's) and every evaluation metric **within a tolerance** recorded
beside it in ``tests/data/pins.json``. The tolerances were measured, not guessed:
``bench/cpu_kernels.py`` re-runs the pins under settings that make this machine pick the kernels
another CPU would (ATen's scalar code instead of AVX2, oneDNN and MKL without AVX, 1 or 2
threads), and writes three times the largest change it saw, per epoch and kind, never below a
float32 floor.

Why the pinned runs train with a damped learning rate (``--lr 3.5e-7``, 1/1000 of the official):
at the official rate Adam turns the float roundings of other kernels (gradients differing in the
last bits) into weight updates differing by up to ±lr, which reach the next epoch's clustering,
so labels flip from epoch 1 on and the losses move by up to 2e-3 — more than a real regression
moves them (a 1 % change of CC's memory momentum moves epoch 0's step losses by 3e-5). Damped,
the losses move by at most 2e-6 between kernels and every label and metric of cc and pplr stays
the same under all settings, while a 1 % change of the memory momentum (cc, icrefine) or of
PPLR's β still falls outside the tolerance (``bench/cpu_kernels.py --change``; ``tests/test_pins.py``
runs the momentum case). icrefine pins one epoch: its epoch-1 average linkage on ~100 nearly tied
Jaccard distances flips rows under any change, another CPU's roundings as much as a 1 % change of
the momentum (measured); the state carried across epochs is CC's, pinned by cc's second epoch.
The official learning rate itself is covered by the unit tests of the optimisers and schedules.

ncplr pins plain NCPLR (``--global-only``, the cheaper variant: GL-NCPLR adds the halves'
memories and the mixed clustering distance on the same code): its neighbour sets, refined targets
and refinement loss; no label moves under any setting, and a 1 % change of α (its refined target's
one-hot weight) moves epoch 1's losses 22 times the tolerance. mar runs its source-pretraining
prelude inside the run, on the built-in labelled source ``synthetic:tiny-source``. MAR trains with
SGD, whose update is lr × gradient (Adam's is about lr whatever the gradient; MAR's losses weigh 50
× a scale-30 softmax), so 1/1000 does not damp it: at 1/1000 of its two rates another CPU moved
its losses by 5-13 %, rank-1 and most of its mined pairs, at 1/10,000 the losses still by 2.5e-3.
At 1/100,000 (``MAR_DAMPED_LR``, ``MAR_DAMPED_PRETRAIN_LR``) they move by at most 5e-5, its mined
pairs not at all, and a 1 % change of its agent weight λ2 moves them by 1e-2; one near-tied
ranking of epoch 0's evaluation swaps under two settings (mAP ± 5e-3), hence that epoch's wider
tolerance for metrics.

Re-record only for a change that is meant to change results, and say so in CHANGELOG.md:
``python -m tests.pins [RUN ...]`` re-records fingerprints and keeps the tolerances;
``python bench/cpu_kernels.py --record`` re-measures both (``--runs ncplr,mar --record`` those
runs alone; the others' entries stay as they are).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from reidctl.artifacts import LABELS, existing_schema, read_labels

PINS = Path(__file__).parent / "data" / "pins.json"
#: 1/1000 of the official Adam learning rate (see the module docstring).
DAMPED_LR = "3.5e-7"
#: MAR trains with SGD: 1/100,000 of its official rates (training 2e-4, source pretraining 1e-2).
MAR_DAMPED_LR, MAR_DAMPED_PRETRAIN_LR = "2e-9", "1e-7"
COMMON = ["--data", "synthetic:tiny", "--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32",
          "--bn-chunks", "2", "--lr", DAMPED_LR, "--eval-every", "1", "--workers", "0", "--device", "cpu",
          "--deterministic", "--epochs", "2", "--json"]
#: The clustering methods' steps (MAR, which does not cluster, refuses these options).
CLUSTERING = ["--k1", "6", "--k2", "2", "--min-samples", "3", "--iters", "2", "--batch-size", "8",
              "--num-instances", "4"]
RUNS = {
    "cc": [*CLUSTERING, "--method", "cc", "--eps", "0.5"],
    "pplr": [*CLUSTERING, "--method", "pplr", "--eps", "0.5"],
    # the stripes as they were before disjoint stripes became the default (issue 14)
    "pplr_adaptive": [*CLUSTERING, "--method", "pplr", "--eps", "0.5", "--part-split", "adaptive"],
    "icrefine": [*CLUSTERING, "--method", "icrefine", "--n-clusters", "12", "--intra-epochs", "2", "--intra-iters",
                 "2", "--intra-clusters", "images/3", "--intra-lr", DAMPED_LR, "--epochs", "1"],
    # plain NCPLR (global only): its neighbour sets (refine stage), refined targets and refinement loss
    "ncplr": [*CLUSTERING, "--method", "ncplr", "--eps", "0.5"],
    # no clustering: the built-in labelled source, its pretraining prelude inside the run, small
    # two-domain steps (8 source + 8 target images); both SGD rates at 1/100,000 of MAR's (see above)
    "mar": ["--method", "mar", "--aux-data", "synthetic:tiny-source", "--aux-splits", "train", "--pretrain-epochs", "1",
            "--pretrain-batch-size", "8", "--pretrain-lr", MAR_DAMPED_PRETRAIN_LR, "--batch-size", "16",
            "--mining-ratio", "0.2", "--lr", MAR_DAMPED_LR],
}
#: Kinds of float a fingerprint holds (each epoch has a tolerance per kind).
KINDS = ("loss", "eval")
#: The smallest tolerance (relative): float32 roundings of one forward pass.
FLOOR = 1e-6


def labels_sha(path: Path, name: str = "labels") -> str:
    return hashlib.sha256(_labels_array(path, name).tobytes()).hexdigest()[:16]


def labels_of(path: Path, name: str = "labels") -> list[int]:
    return _labels_array(path, name).tolist()


def _labels_array(path: Path, name: str) -> np.ndarray:
    """A labels file's labels through reidctl's reader (a refined.h5 may keep them in the
    labels.h5 beside it); other files' arrays (intra.h5) as stored."""
    if name == "labels" and existing_schema(path) == LABELS:
        return np.asarray(read_labels(path).labels, dtype=np.int64)
    with h5py.File(path, "r") as f:
        return np.asarray(f[name], dtype=np.int64)


def _has(path: Path, name: str) -> bool:
    with h5py.File(path, "r") as f:
        return name in f


def fingerprint(run_dir: Path, result: dict[str, Any], *, full_labels: bool = False) -> dict[str, Any]:
    """What must stay the same: every epoch's labels (a digest, or the lists with
    ``full_labels``), cluster counts, MAR's mined pairs (likewise), losses (the mean and each
    step's) and evaluation metrics."""
    read = labels_of if full_labels else labels_sha
    epochs = []
    for rec in result["epochs"]:
        row: dict[str, Any] = {"epoch": rec["epoch"]}
        if "eval" in rec:
            row["eval"] = {k: v for k, v in rec["eval"].items() if isinstance(v, float) and k != "seconds"}
        if rec["epoch"] != "init":
            folder = run_dir / f"epoch_{rec['epoch']:03d}"
            if "refine" in rec:
                row.update(cluster=read(folder / "labels.h5"), refined=read(folder / "refined.h5"),
                           clusters=rec["refine"]["clusters"], outliers=rec["refine"]["outliers"])
            row["loss"] = {"mean": rec["train"]["loss"], "steps": [float(x) for x in rec["train"]["step_losses"]]}
            state = folder / "model.state.h5"
            if state.exists() and _has(state, "mined_pairs"):  # MAR: the target pairs it mined (exact)
                row["mined"] = read(state, "mined_pairs")
        epochs.append(row)
    out: dict[str, Any] = {"epochs": epochs}
    intra = run_dir / "intra" / "intra.h5"
    if intra.exists():
        out["intra"] = read(intra)
    return out


def floats(fp: dict[str, Any]) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """The floats of a fingerprint by (epoch, kind): ``[(where, value), ...]``."""
    out: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for row in fp["epochs"]:
        epoch = str(row["epoch"])
        for name, value in row.get("eval", {}).items():
            out.setdefault((epoch, "eval"), []).append((f"eval.{name}", value))
        if "loss" in row:
            out.setdefault((epoch, "loss"), []).append(("loss.mean", row["loss"]["mean"]))
            out[(epoch, "loss")] += [(f"loss.steps[{i}]", v) for i, v in enumerate(row["loss"]["steps"])]
    return out


def differences(actual: dict[str, Any], expected: dict[str, Any], tolerance: dict[str, dict[str, float]]) -> list[str]:
    """Every way ``actual`` differs from the pinned ``expected``: integers and label digests
    exactly, floats beyond their epoch's tolerance (relative). Empty when the pin holds."""
    problems = []
    if len(actual["epochs"]) != len(expected["epochs"]) or actual.get("intra") != expected.get("intra"):
        problems.append("epochs or intra-camera labels differ")
    for a, e in zip(actual["epochs"], expected["epochs"]):
        for key in ("epoch", "cluster", "refined", "clusters", "outliers", "mined"):
            if a.get(key) != e.get(key):
                problems.append(f"epoch {e['epoch']}: {key} {a.get(key)} != {e.get(key)}")
    got, want = floats(actual), floats(expected)
    for (epoch, kind), values in want.items():
        tol = tolerance[epoch][kind]
        mine = dict(got.get((epoch, kind), []))
        for where, value in values:
            if where not in mine:
                problems.append(f"epoch {epoch}: {where} missing")
            elif abs(mine[where] - value) > tol * abs(value) + 1e-12:
                problems.append(f"epoch {epoch}: {where} {mine[where]!r} != {value!r} ± {tol:.1e} (relative)")
    return problems


def run(method: str, run_dir: Path, extra: tuple[str, ...] = (), **kwargs: Any) -> dict[str, Any]:
    """Run one pinned loop in-process (the CLI, as a user types it) and fingerprint it."""
    from typer.testing import CliRunner

    from reidctl.cli import app

    res = CliRunner().invoke(app, ["loop", *COMMON, *RUNS[method], *extra, "--run-dir", str(run_dir)])
    if res.exit_code != 0 or res.exception is not None:
        raise RuntimeError(f"pinned run {method} failed: {res.output}") from res.exception
    return fingerprint(run_dir, json.loads(res.stdout), **kwargs)


def load() -> dict[str, Any]:
    return json.loads(PINS.read_text()) if PINS.exists() else {}


def save(pins: dict[str, Any]) -> None:
    PINS.write_text(json.dumps(pins, indent=1) + "\n")


if __name__ == "__main__":
    import tempfile

    import torch

    torch.set_num_threads(1)  # as the test runs them
    pins = load()
    with tempfile.TemporaryDirectory() as tmp:  # `python -m tests.pins pplr` re-records pplr alone
        for m in sys.argv[1:] or RUNS:
            pins[m] = {**pins.get(m, {}), "fingerprint": run(m, Path(tmp) / m)}
    save(pins)
    print(json.dumps(pins, indent=1))
