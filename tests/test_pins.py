"""`loop` for cc, pplr, icrefine, ncplr and mar gives the pinned labels and metrics, on any machine
(tests/pins.py explains the pins, their tolerances and how to re-record them)."""

import hashlib

import numpy as np
import pytest

from tests.pins import RUNS, differences, load, run

PINNED = load()


@pytest.mark.parametrize("method", [pytest.param(m, marks=() if m == "cc" else pytest.mark.slow) for m in RUNS])
def test_loop_matches_the_pinned_labels_and_metrics(method, tmp_path, one_thread):
    pin = PINNED[method]
    assert differences(run(method, tmp_path / method), pin["fingerprint"], pin["tolerance"]) == []


#: A 1 % change of one weight per method, and the epoch whose losses it moves beyond the tolerance
#: (bench/README.md, cpu_kernels.py: the measured moves).
CHANGES = {
    "cc": (("--momentum", "0.101"), 0),  # CC's memory momentum, 0.1
    "ncplr": (("--alpha", "0.101"), 1),  # the one-hot weight α of NCPLR's refined target, 0.1
    "mar": (("--agent-weight", "50.5"), 0),  # MAR's λ2, the weight of its agent losses, 50
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(CHANGES))
def test_a_one_percent_change_of_a_method_weight_fails_its_pin(method, tmp_path, one_thread):
    """The tolerances hold another CPU's roundings, not a real change: CC with its memory momentum
    0.101 instead of 0.1 (1 %) moves epoch 0's step losses beyond them; so do NCPLR's α for epoch 1
    and MAR's agent weight for epoch 0."""
    extra, epoch = CHANGES[method]
    pin = PINNED[method]
    problems = differences(run(method, tmp_path / method, extra=extra), pin["fingerprint"], pin["tolerance"])
    assert any(p.startswith(f"epoch {epoch}: loss.") for p in problems), problems


def _sha(labels):
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]


def test_the_comparison_is_exact_for_labels_and_tolerant_for_floats():
    labels = [0, 0, 1, 1, -1, 2]
    pinned = {"epochs": [{"epoch": "init", "eval": {"mAP": 0.5}},
                         {"epoch": 0, "eval": {"mAP": 0.25}, "cluster": _sha(labels), "refined": _sha(labels),
                          "clusters": 3, "outliers": 1, "loss": {"mean": 4.0, "steps": [3.0, 5.0]}}]}
    tolerance = {"init": {"eval": 1e-6}, "0": {"eval": 1e-6, "loss": 1e-4}}
    assert differences(pinned, pinned, tolerance) == []
    flipped = [0, 0, 1, 2, -1, 2]  # one label flipped
    moved = {"epochs": [pinned["epochs"][0], {**pinned["epochs"][1], "cluster": _sha(flipped)}]}
    assert differences(moved, pinned, tolerance) == [f"epoch 0: cluster {_sha(flipped)} != {_sha(labels)}"]
    within = {"epochs": [pinned["epochs"][0], {**pinned["epochs"][1], "loss": {"mean": 4.0003, "steps": [3.0, 5.0]}}]}
    assert differences(within, pinned, tolerance) == []  # 7.5e-5 relative
    beyond = {"epochs": [pinned["epochs"][0], {**pinned["epochs"][1], "loss": {"mean": 4.0, "steps": [3.0, 5.001]}}]}
    assert differences(beyond, pinned, tolerance) == ["epoch 0: loss.steps[1] 5.001 != 5.0 ± 1.0e-04 (relative)"]
