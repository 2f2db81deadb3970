"""A method plugs into `loop` without touching it: the test-only ``toy`` (tests/toy_method.py) is
registered with one line and brings its own prelude, optimiser, second data stream, epoch length
and persistent state; a variant that does not cluster trains on every row."""

from __future__ import annotations

import json

import pytest

from reidctl.data.datasets import load_dataset
from reidctl.errors import ReidctlError
from reidctl.methods import METHODS
from reidctl.pipeline.loop import run_loop
from tests.fakedata import colour_market
from tests.looptools import CLUSTER, loop_config, read_log
from tests.toy_method import Toy

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = {"iters": 3, "batch_size": 8, "num_instances": 4, "bn_chunks": 2, "lr": 0.01, "source_batch": 8,
         "memory_rows": 40}


class ToyWithoutClusters(Toy):
    name = "toy-all"
    clusters = False


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    return colour_market(root / "target", train_ids=6, test_ids=3), colour_market(root / "source", train_ids=5,
                                                                                   test_ids=1, per_camera=2)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", Toy)  # the one registry line a new method adds
    monkeypatch.setitem(METHODS, "toy-all", ToyWithoutClusters)


def _config(data, run_dir, method="toy", loop=None, **options):
    target, source = data
    clustering = CLUSTER if METHODS[method].clusters else {}
    return loop_config(target, run_dir, method=method, **(loop or {}),
                       options={**clustering, **TRAIN, "source": str(source), **options})


def _stages(run_dir, start=0):
    return [(r["epoch"], r["stage"], r["cached"]) for r in read_log(run_dir)[start:] if "stage" in r and "cached" in r]


def test_a_registered_method_runs_its_prelude_once_and_its_own_training(data, registered, tmp_path):
    run_dir = tmp_path / "run"
    result = run_loop(_config(data, run_dir))
    stages = _stages(run_dir)
    assert stages[0] == ("stats", "stats", False)  # the prelude, before epoch 0
    assert [s for s in stages if s[1] == "stats"] == [stages[0]]  # once
    assert [s[1] for s in stages if s[0] == 0] == ["extract", "cluster", "refine", "train", "extract_test",
                                                   "evaluate"]
    stats = json.loads((run_dir / "stats" / "stats.json").read_text())
    assert result["stats"]["mean"] == stats["mean"]
    for epoch in result["epochs"][1:]:
        assert epoch["refine"]["stats_mean"] == stats["mean"]  # the prelude's output reached refine
        assert epoch["train"]["iterations"] == 20 // TRAIN["source_batch"]  # the toy's epoch, not --iters 3
    assert (run_dir / "epoch_001" / "model.state.h5").is_file()  # the memory, beside the checkpoint

    n = len(read_log(run_dir))
    run_loop(_config(data, run_dir))
    assert all(cached for _, _, cached in _stages(run_dir, n))  # resumable like every stage

    n = len(read_log(run_dir))
    again = run_loop(_config(data, run_dir, stats_images=5))  # a prelude option: it and its readers re-run
    rerun = _stages(run_dir, n)
    assert ("stats", "stats", False) in rerun and (0, "refine", False) in rerun
    assert (0, "extract", True) in rerun and (0, "cluster", True) in rerun
    assert again["stats"]["images"] == 5 and again["epochs"][1]["refine"]["stats_mean"] == again["stats"]["mean"]
    assert again["stats"]["mean"] != stats["mean"]


@pytest.mark.slow
def test_a_ready_made_prelude_output_replaces_the_prelude(data, registered, tmp_path):
    run_loop(_config(data, tmp_path / "a", stats_images=4))
    given = tmp_path / "a" / "stats" / "stats.json"
    result = run_loop(_config(data, tmp_path / "b", stats=str(given)))
    assert not (tmp_path / "b" / "stats").exists()
    assert result["epochs"][1]["refine"]["stats_mean"] == json.loads(given.read_text())["mean"]
    with pytest.raises(ReidctlError, match=r"^--stats FILE replaces the stats stage, so --stats-images do not"):
        run_loop(_config(data, tmp_path / "c", stats=str(given), stats_images=3))


def test_a_method_that_does_not_cluster_trains_on_every_row(data, registered, tmp_path):
    run_dir = tmp_path / "run"
    result = run_loop(_config(data, run_dir, method="toy-all", loop={"epochs": 1, "eval_every": 0}))
    assert {s[1] for s in _stages(run_dir)} == {"stats", "extract", "train"}
    train = result["epochs"][0]["train"]
    assert train["images"] == train["rows"] == len(load_dataset(data[0]).train) and train["outliers"] == 0
    with pytest.raises(ReidctlError, match=r"^--eps does not apply to --method toy-all"):
        run_loop(_config(data, tmp_path / "x", method="toy-all", eps=0.4))
