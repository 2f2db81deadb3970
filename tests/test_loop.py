"""`loop`: stages cached by key, --force-from, the CLI summary (kill -9 / Ctrl-C: test_reliability.py)."""

from __future__ import annotations


import pytest

from reidctl.errors import ReidctlError
from reidctl.pipeline.loop import run_loop
from tests.clitools import run_ok
from tests.fakedata import colour_market
from tests.looptools import CLI_ARGS, CLUSTER, TRAIN, loop_config, read_log

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return colour_market(tmp_path_factory.mktemp("loop") / "market", train_ids=6, test_ids=3)


_config, _log = loop_config, read_log


def _metrics(result):
    return [(r["epoch"], r.get("eval", {}).get("mAP"), r.get("train", {}).get("loss")) for r in result["epochs"]]


def test_loop_runs_then_skips_every_stage_on_rerun(data, tmp_path):
    run_dir = tmp_path / "run"
    first = run_loop(_config(data, run_dir))
    assert [r["epoch"] for r in first["epochs"]] == ["init", 0, 1]
    assert first["last"]["epoch"] == 1 and first["best"] is not None
    for epoch in ("epoch_000", "epoch_001"):
        for name in ("train.h5", "labels.h5", "refined.h5", "model.pt", "test.h5", "eval.json"):
            assert (run_dir / epoch / name).exists()
    rec = first["epochs"][1]
    assert rec["refine"]["clusters"] == 6 and rec["refine"]["quality"]["f_score"] == 1.0
    assert rec["refine"]["camera_mix"]["multi_camera_clusters"] == 6  # each colour seen by both cameras
    assert rec["train"]["iterations"] == 2
    n = len(_log(run_dir))
    assert all(not r["cached"] for r in _log(run_dir))
    again = run_loop(_config(data, run_dir))
    new = _log(run_dir)[n:]
    assert new and all(r["cached"] for r in new)
    assert _metrics(again) == _metrics(first)
    # --force-from train re-runs training (and what depends on it), not extraction or clustering
    run_loop(_config(data, run_dir, force_from="train"))
    forced = _log(run_dir)[2 * n:]
    by_stage = {(r["epoch"], r["stage"]): r["cached"] for r in forced}
    assert by_stage[(0, "cluster")] is True and by_stage[(0, "train")] is False
    assert by_stage[(0, "evaluate")] is False


def test_changed_option_reruns_only_from_the_changed_stage(data, tmp_path):
    run_dir = tmp_path / "run"
    run_loop(_config(data, run_dir, epochs=1, eval_every=0))
    n = len(_log(run_dir))
    run_loop(_config(data, run_dir, epochs=1, eval_every=0, options={**CLUSTER, **TRAIN, "eps": 0.45}))
    stages = {r["stage"]: r["cached"] for r in _log(run_dir)[n:]}
    # the same labels come out, so the content-addressed training stage is still valid
    assert stages == {"extract": True, "cluster": False, "refine": False, "train": True}
    n = len(_log(run_dir))
    run_loop(_config(data, run_dir, epochs=1, eval_every=0, options={**CLUSTER, **TRAIN, "eps": 0.45, "iters": 3}))
    stages = {r["stage"]: r["cached"] for r in _log(run_dir)[n:]}
    assert stages == {"extract": True, "cluster": True, "refine": True, "train": False}


@pytest.mark.parametrize(("kw", "message"), [
    ({"force_from": "nope"}, r"^--force-from nope: choose one of prelude, extract, cluster, "),
    ({"epochs": 0}, r"^--epochs must be at least 1$"),
    ({"method": "nope"}, r"^unknown --method 'nope' \(choose one of cc, "),
])
def test_bad_options_are_user_errors(data, tmp_path, kw, message):
    with pytest.raises(ReidctlError, match=message):
        run_loop(_config(data, tmp_path / "x", **kw))
    assert not (tmp_path / "x" / "epoch_000").exists()


def test_cli_loop_prints_summary(data, tmp_path):
    result = run_ok("loop", "--data", data, "--run-dir", tmp_path / "r", "--epochs", "1", *CLI_ARGS)
    assert "best" in result.output and "last" in result.output and "mAP" in result.output
    assert "(6 multi-camera)" in result.output and "warning" not in result.output
