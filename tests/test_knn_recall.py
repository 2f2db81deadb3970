"""The recall probe of approximate kNN search and the tuning of ``--knn-backend auto`` (issue 30):
the probe by hand and seeded, the tuning reaching its target, stopping within its rounds and its
time budget, the exact fallback, the warning of an explicit backend, and the probe in the
summaries of `cluster`, `refine` and `loop` and in `inspect`."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from reidctl import search
from reidctl.artifacts import read_labels, write_features
from reidctl.search.approx import ApproxSettings, build_index
from reidctl.search.probe import probe_recall, sample_rows
from reidctl.search.tuning import RecallTarget, agreed, graphs, pca_ladder, tune, widen
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market

pytestmark = [pytest.mark.usefixtures("one_thread")]
needs_faiss = pytest.mark.skipif(not search.faiss_available(), reason="faiss is not installed")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _blobs(n: int = 800, d: int = 32, ids: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pid = rng.integers(0, ids, n)
    return _unit(rng.standard_normal((ids, d))[pid] + 0.3 * rng.standard_normal((n, d))), pid


def _isotropic(n: int = 3000, d: int = 64, seed: int = 0) -> np.ndarray:
    """Random directions: no principal axes to keep, the case PCA-reduced indexes lose."""
    return _unit(np.random.default_rng(seed).standard_normal((n, d)))


def test_probe_by_hand():
    # on a line of angles: row i's 3 nearest are itself and its neighbours at ±1 step
    angles = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    x = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    exact = search.knn(x, 3, backend="torch")[1]
    assert probe_recall(x, exact).recall == 1.0
    worse = exact.copy()
    worse[2] = [2, 1, 5]  # row 2 misses 3 (its list holds 5, three steps away): 2 of 3 found
    worse[4] = [4, 4, 3]  # a repeated row counts once: 2 of 3
    probe = probe_recall(x, worse, rows=6)
    assert probe.recall == pytest.approx((6 * 3 - 2) / 18) and probe.identical == pytest.approx(4 / 6)
    assert probe.rows == 6 and probe.k == 3


def test_probe_counts_a_tied_twin_as_found():
    x = _unit(np.random.default_rng(3).standard_normal((40, 8)))
    x[7] = x[3]  # duplicate images: either twin is a right answer
    d, i = search.knn(x, 5, backend="torch")
    swapped = np.where(i == 3, 7, np.where(i == 7, 3, i))  # every list names the other twin
    assert probe_recall(x, swapped).recall == 1.0


def test_probe_sample_is_seeded():
    assert sample_rows(10_000, 1000, 0).tolist() == sample_rows(10_000, 1000, 0).tolist()
    assert sample_rows(10_000, 1000, 0).tolist() != sample_rows(10_000, 1000, 1).tolist()
    assert sample_rows(50, 1000, 0).tolist() == list(range(50))  # a small set: every row
    x = _isotropic(2000, 16)
    lists = search.knn(x, 10, backend="torch")[1]
    lists[::3, -1] = (lists[::3, -1] + 1000) % 2000  # lose one neighbour of every third row
    a, b = probe_recall(x, lists, rows=300, seed=5), probe_recall(x, lists, rows=300, seed=5)
    assert (a.recall, a.identical) == (b.recall, b.identical)
    assert 0.9 < a.recall < 1.0


def test_ladders():
    assert pca_ladder(128, 2048) == [128, 256, 512, 1024, 0]
    assert pca_ladder(128, 512) == [128, 256, 0] and pca_ladder(0, 512) == [0] and pca_ladder(128, 64) == [0]
    st = ApproxSettings(ef_search=96, candidates=2, nprobe=32)
    assert (widen(st, "faiss-hnsw", 2, 30).ef_search, widen(st, "faiss-hnsw", 2, 30).candidates) == (384, 2)
    assert widen(st, "faiss-ivf", 2, 30).nprobe == 512 and widen(st, "faiss-ivf", 0, 30) == st
    # 8 × 30 = 240 candidates: the walk keeps 240 whatever efSearch below it, so each step doubles 240
    wide = dataclasses.replace(st, candidates=8)
    assert [widen(wide, "faiss-hnsw", s, 30).ef_search for s in range(4)] == [96, 480, 960, 1920]
    assert [g.ef_construction for g in graphs(st, "faiss-hnsw")] == [40, 160] and graphs(st, "faiss-ivf") == [st]


@needs_faiss
@pytest.mark.parametrize("backend", ["faiss-hnsw", "faiss-ivf"])
def test_tuning_reaches_the_target(monkeypatch, backend):
    monkeypatch.setattr("reidctl.search.tuning.BUDGET_SHARE", float("inf"))
    x = torch.from_numpy(_isotropic())
    target = RecallTarget(recall=0.97)
    tuned = tune(x, 20, backend, ApproxSettings(pca_dim=16), target, torch.device("cpu"))
    assert tuned.index is not None and tuned.reason is None
    assert tuned.sample_recall >= 0.97 and 1 < len(tuned.rounds)  # the defaults were not enough
    assert tuned.rounds[0]["sample_recall"] < 0.97
    assert sum(not r.get("ceiling") for r in tuned.rounds) <= target.max_rounds
    _, idx = tuned.index.search(np.arange(len(x)), 20, tuned.settings)
    assert probe_recall(x, idx).recall >= 0.95  # fresh rows agree with the tuning's sample


@needs_faiss
def test_tuning_stops_within_its_rounds():
    x = torch.from_numpy(_isotropic())
    target = RecallTarget(recall=1.0, max_rounds=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("reidctl.search.tuning.BUDGET_SHARE", float("inf"))
        tuned = tune(x, 20, "faiss-ivf", ApproxSettings(pca_dim=8, nprobe=1), target, torch.device("cpu"))
    assert tuned.index is None and len(tuned.rounds) == 2  # 1 and 4 of 219 lists probed
    assert tuned.reason.startswith("--knn-backend auto: faiss-ivf reached recall@20 ")
    assert "below --knn-recall 1 (2 trial searches); searching exactly" in tuned.reason


@needs_faiss
def test_tuning_stops_within_its_time_budget(monkeypatch):
    monkeypatch.setattr("reidctl.search.tuning.BUDGET_SHARE", 1e-9)  # any approximate search is too slow
    tuned = tune(torch.from_numpy(_isotropic()), 20, "faiss-hnsw", ApproxSettings(pca_dim=16), RecallTarget(),
                 torch.device("cpu"))
    assert tuned.index is None and len(tuned.rounds) <= 1
    assert "passed 1e-09× exact search's); searching exactly" in tuned.reason


@needs_faiss
def test_auto_falls_back_to_exact_search_and_says_so(monkeypatch):
    monkeypatch.setitem(search.EXACT_BUDGET, "cpu", 1.0)  # auto goes approximate at any size
    x = _isotropic(1500, 64)
    # 1,500 rows: the probe's sample is every row, so no approximate search can beat exact search
    found = search.knn_search(x, 20, device="cpu")
    assert found.backend == "torch" and found.tuning.to_json()["exact_fallback"] is True
    assert found.note.startswith("--knn-backend auto: faiss-hnsw ran no trial search that could reach --knn-recall 0.98 (")
    assert "\n" not in found.note
    exact = search.knn(x, 20, backend="torch")
    np.testing.assert_array_equal(found.idx, exact[1])
    with pytest.warns(UserWarning, match="searching exactly"):
        search.knn(x, 20, device="cpu")


@needs_faiss
def test_an_explicit_backend_keeps_its_settings_and_warns_below_the_target():
    x = _isotropic()
    found = search.knn_search(x, 20, backend="faiss-hnsw", device="cpu", settings=ApproxSettings(pca_dim=8))
    assert found.backend == "faiss-hnsw" and found.tuning is None and found.settings.pca_dim == 8
    assert found.probe.recall < 0.98
    assert found.warn and found.note.startswith(
        f"faiss-hnsw found recall@20 {found.probe.recall:.3f} on 1,000 sampled rows against exact search (identical "
        f"lists on {found.probe.identical:.0%}), below --knn-recall 0.98")
    with pytest.warns(UserWarning, match="faiss-ivf found recall@20 .* below --knn-recall 0.98"):
        search.knn(x, 20, backend="faiss-ivf", device="cpu")  # 32 of 219 lists probed
    quiet = search.knn_search(x, 20, backend="faiss-hnsw", device="cpu", recall=0)
    assert quiet.probe is None and quiet.note is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        search.knn(_blobs()[0], 10, backend="faiss-hnsw", device="cpu")  # easy features: no warning


@needs_faiss
def test_ranks_follow_the_agreed_settings():
    x = torch.from_numpy(_blobs()[0])
    st = ApproxSettings(pca_dim=16)
    tuned = tune(x, 10, "faiss-hnsw", st, RecallTarget(recall=0.5), torch.device("cpu"))
    other = dataclasses.replace(st, pca_dim=8, ef_search=200)
    follows = agreed(tuned, (other, False), x, "faiss-hnsw", torch.device("cpu"))
    assert follows.settings == other and follows.index.pca_dim == 8  # its own index, rebuilt at rank 0's dimension
    assert agreed(tuned, (other, True), x, "faiss-hnsw", torch.device("cpu")).index is None


def test_knn_recall_must_be_a_share(tmp_path):
    with pytest.raises(search.ReidctlError, match=r"--knn-recall 1.5: must lie in \[0, 1\]"):
        search.knn_search(_blobs()[0], 5, recall=1.5)
    f = _features_file(tmp_path / "f.h5", *_blobs())
    run_error("cluster", f, "--out", tmp_path / "l.h5", "--knn-recall", "-0.1", match=r"--knn-recall -0.1: must lie")


def _features_file(path, x, pid):
    write_features(path, x, camids=np.arange(len(x)) % 3, paths=[f"{i:05d}.jpg" for i in range(len(x))],
                   split=["train"] * len(x), pids=pid)
    return path


@pytest.fixture
def forced_approximate(monkeypatch):
    """``auto`` goes approximate at any size and its tuning may take its time."""
    monkeypatch.setitem(search.EXACT_BUDGET, "cpu", 1.0)
    monkeypatch.setattr("reidctl.search.tuning.BUDGET_SHARE", float("inf"))


@needs_faiss
def test_cluster_and_refine_keep_the_probe_in_their_summary(tmp_path, forced_approximate):
    f = _features_file(tmp_path / "f.h5", *_blobs())
    out = json.loads(run_ok("cluster", f, "--out", tmp_path / "l.h5", "--k1", "10", "--device", "cpu", "--json").stdout)
    assert out["knn_backend"] == "faiss-hnsw" and out["knn_probe"]["recall"] >= 0.98 and out["knn_probe"]["rows"] == 800
    assert out["knn_tuning"]["exact_fallback"] is False
    note = out["knn_recall_note"]
    assert note.startswith(f"faiss-hnsw found recall@10 {out['knn_probe']['recall']:.3f} on 800 sampled rows against "
                           "exact search (identical lists on ") and note.endswith("), at or above --knn-recall 0.98")
    stored = json.loads(read_labels(tmp_path / "l.h5").meta.attrs["summary"])
    assert stored["knn_probe"] == out["knn_probe"]
    shown = run_ok("inspect", tmp_path / "l.h5").stdout
    assert f"recall@10 {out['knn_probe']['recall']:.3f}" in shown and "kNN recall probe" in shown
    refined = json.loads(run_ok("refine", f, "--method", "cc", "--k1", "10", "--out", tmp_path / "r.h5",
                                "--json").stdout)
    assert refined["knn_backend"] == "faiss-hnsw" and refined["knn_probe"]["recall"] >= 0.98


@needs_faiss
def test_an_explicit_backend_below_the_target_warns_in_cluster(tmp_path):
    f = _features_file(tmp_path / "f.h5", _isotropic(1200, 64), np.arange(1200) % 60)
    res = run_ok("cluster", f, "--out", tmp_path / "l.h5", "--knn-backend", "faiss-ivf", "--k1", "20", "--device", "cpu")
    assert "faiss-ivf found recall@20" in res.stderr and "below --knn-recall 0.98 (pca dim" in res.stderr
    summary = json.loads(read_labels(tmp_path / "l.h5").meta.attrs["summary"])
    assert summary["knn_probe"]["recall"] < 0.98 and summary["knn_recall_note"].startswith("faiss-ivf found")


@needs_faiss
def test_loop_logs_the_probe_of_every_epoch(tmp_path, forced_approximate):
    data = colour_market(tmp_path / "data", train_ids=5, test_ids=3, per_camera=3)
    run_ok("loop", "--data", data, "--method", "cc", "--run-dir", tmp_path / "run", "--arch", "resnet18",
           "--pretrained", "none", "--height", "64", "--width", "32", "--workers", "0", "--device", "cpu",
           "--batch-size", "16", "--num-instances", "4", "--iters", "1", "--k1", "6", "--k2", "2", "--epochs", "1",
           "--eval-every", "0", "--no-eval-init", "--json")
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    clustered = [r for r in records if r.get("stage") == "cluster" and "rows" in r]  # (not its progress, notices)
    assert clustered and all("knn_probe" in r and "knn_tuning" in r for r in clustered)


@needs_faiss
@pytest.mark.slow
def test_the_probe_of_a_sharded_search_runs_on_the_gathered_lists(tmp_path):
    f = _features_file(tmp_path / "f.h5", *_blobs(n=900))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "reidctl",
           "cluster", str(f), "--out", str(tmp_path / "two.h5"), "--knn-backend", "faiss-hnsw", "--k1", "10",
           "--device", "cpu", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["world_size"] == 2 and out["knn_probe"]["rows"] == 900 and out["knn_probe"]["recall"] >= 0.98


@needs_faiss
def test_without_a_gpu_index_the_cpu_graph_is_built(monkeypatch):
    import faiss

    import reidctl.search.approx as approx

    x = torch.from_numpy(_blobs()[0])
    cuda = torch.device("cuda")  # asked for, but this faiss has no GPU index (or sees no GPU)
    if approx.gpu_index_available(faiss, "GpuIndexCagra"):
        pytest.skip("this faiss has a GPU graph index: bench/gpu_check.sh checks it")
    hnsw = build_index(x, "faiss-hnsw", ApproxSettings(pca_dim=16), cuda)
    assert not hnsw.on_gpu and isinstance(hnsw.index, faiss.IndexHNSWFlat)
    assert not build_index(x, "faiss-ivf", ApproxSettings(pca_dim=16), cuda).on_gpu
    built = []
    monkeypatch.setattr(approx, "gpu_index_available", lambda module, name: True)
    monkeypatch.setattr(approx, "_build_cagra", lambda module, data, st: built.append(data.shape) or "cagra")
    assert build_index(x, "faiss-hnsw", ApproxSettings(pca_dim=16), cuda).index == "cagra" and built == [(800, 16)]
    assert build_index(x, "faiss-hnsw", ApproxSettings(pca_dim=16), torch.device("cpu")).index != "cagra"
