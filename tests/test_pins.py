"""`loop` for cc, pplr and icrefine gives the labels and metrics recorded before the plug-in
refactor (tests/pins.py explains the pins and how to re-record them)."""

import json

import pytest

from tests.pins import PINS, RUNS, run

PINNED = json.loads(PINS.read_text())


def _same(actual, expected, where=""):
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for k in expected:
            _same(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            _same(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-6, abs=1e-9), where
    else:
        assert actual == expected, where


@pytest.mark.parametrize("method", [pytest.param(m, marks=() if m == "cc" else pytest.mark.slow) for m in RUNS])
def test_loop_matches_the_pinned_labels_and_metrics(method, tmp_path, one_thread):
    _same(run(method, tmp_path / method), PINNED[method], method)
