"""The run's records as types (issue 28): ``summary.json`` is written and read in one place
(reidctl/pipeline/records.py), and reading then writing gives back the same JSON."""

from __future__ import annotations

import json

import pytest

from reidctl.errors import ReidctlError
from reidctl.pipeline.loop import run_loop
from reidctl.pipeline.records import EpochRecord, RunSummary
from tests.fakedata import colour_market
from tests.looptools import loop_config

DOC = {
    "run_dir": "runs/x", "method": "icrefine",
    "epochs": [{"epoch": "init", "eval": {"mAP": 0.1, "rank1": 0.2}},
               {"epoch": 0, "cluster": {"clusters": 3}, "refine": {"clusters": 2, "outliers": 1},
                "train": {"loss": 1.5, "step_losses": [1.6, 1.4]}, "eval": {"mAP": 0.3, "rank1": 0.4}},
               {"epoch": 1, "cluster": {"clusters": 3}, "refine": {"clusters": 3, "outliers": 0}, "train": {"loss": 1.2}}],
    "last": {"epoch": 0, "mAP": 0.3, "rank1": 0.4}, "best": {"epoch": 0, "mAP": 0.3, "rank1": 0.4},
    "checkpoint": "epoch_001/model.pt", "models": {"best": {"file": "best.pt"}}, "stages": [{"stage": "extract"}],
    "files": {"summary": "runs/x/summary.json"}, "intra": {"cameras": 2}, "log_bytes": 1234,
}


def test_a_summary_reads_into_types_and_writes_back_the_same_json():
    run = RunSummary.from_json(json.loads(json.dumps(DOC)))
    assert [e.epoch for e in run.epochs] == ["init", 0, 1] and [e.epoch for e in run.evaluated] == ["init", 0]
    assert run.preludes == {"intra": {"cameras": 2}} and run.log_bytes == 1234
    assert run.epochs[1].labels == {"clusters": 2, "outliers": 1}  # refine's, what training read
    assert EpochRecord(2, cluster={"clusters": 5}).labels == {"clusters": 5}
    assert json.dumps(run.to_json()) == json.dumps(DOC)  # same keys, same order


@pytest.mark.parametrize("doc, match", [
    ({"method": "cc"}, r"x.json: not a loop summary \(no list of \"epochs\"\)"),
    ({"epochs": [{"epoch": -1}]}, r"x.json: epoch record 0 has epoch -1"),
    ({"epochs": [{"epoch": True}]}, r"x.json: epoch record 0 has epoch True"),
    ([1, 2], r"x.json: not a loop summary"),
])
def test_what_is_not_a_run_summary_is_refused_in_one_line(doc, match):
    with pytest.raises(ReidctlError, match=match):
        RunSummary.from_json(doc, "x.json")


def test_a_loop_writes_its_summary_through_the_types(tmp_path):
    data = colour_market(tmp_path / "data", train_ids=6, test_ids=3)
    result = run_loop(loop_config(data, tmp_path / "run", epochs=1))
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written == json.loads(json.dumps(result))
    run = RunSummary.read(tmp_path / "run")
    assert json.dumps(run.to_json()) == json.dumps(written)
    assert [e.epoch for e in run.epochs] == ["init", 0] and run.epochs[1].train["loss"] > 0
