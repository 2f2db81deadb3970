"""kNN at scale (issue 18, in progress): query rows sharded under torchrun, the approximate faiss
backends (correct when they search everything), and the backend choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from reidctl import search
from reidctl.artifacts import read_labels, write_features
from reidctl.errors import ReidctlError
from reidctl.search_approx import ApproxSettings, approx_knn, exact_rerank
from tests.clitools import run_error, run_ok

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n: int = 600, d: int = 32, ids: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, d))
    pid = rng.integers(0, ids, n)
    x = centres[pid] + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), pid


def test_rows_are_the_same_rows_of_the_whole_search():
    x, _ = _blobs()
    full_d, full_i = search.knn(x, 12, backend="torch", device="cpu", block_size=64)
    for lo, hi in [(0, 1), (100, 350), (599, 600)]:
        d, i = search.knn(x, 12, backend="torch", device="cpu", rows=(lo, hi), block_size=7)
        np.testing.assert_array_equal(i, full_i[lo:hi])
        np.testing.assert_allclose(d, full_d[lo:hi], atol=1e-6)


@pytest.mark.parametrize("backend", ["faiss-ivf", "faiss-hnsw"])
def test_approximate_backends_equal_exact_when_they_search_everything(backend):
    pytest.importorskip("faiss")
    x, _ = _blobs()
    exact_d, exact_i = search.knn(x, 10, backend="torch", device="cpu")
    # every list probed / a graph search wide enough to visit every node, no dimension reduction
    settings = ApproxSettings(pca_dim=0, nprobe=10**6, ef_search=600, candidates=60)
    d, i = approx_knn(torch.from_numpy(x), 10, backend, settings=settings, rows=(50, 600))
    np.testing.assert_array_equal(i, exact_i[50:])
    np.testing.assert_allclose(d, exact_d[50:], atol=1e-5)


def test_ivf_with_few_probes_keeps_each_row_and_sorted_exact_distances():
    pytest.importorskip("faiss")
    x, _ = _blobs(seed=1)
    d, i = approx_knn(torch.from_numpy(x), 8, "faiss-ivf", settings=ApproxSettings(pca_dim=16, nprobe=2))
    assert (i[:, 0] == np.arange(len(x))).all() and (np.diff(d, axis=1) >= -1e-6).all()
    exact = np.maximum(2 - 2 * np.einsum("nd,nkd->nk", x, x[i]), 0)
    np.testing.assert_allclose(d, exact, atol=1e-5)  # the distances of what was found are exact


def test_exact_rerank_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.6, 0.8]])
    cand = np.array([[2, 1, 3, 1, 0]])  # a duplicate and a tie (rows 1 and 3 are equal)
    d, i = exact_rerank(x, 0, cand, 3, torch.device("cpu"))
    assert i.tolist() == [[0, 1, 3]]
    np.testing.assert_allclose(d, [[0.0, 0.8, 0.8]], atol=1e-6)


def test_backend_choice_and_errors(monkeypatch):
    assert search.choose_backend(2000, 128, "auto", "cpu") == ("torch", None)
    backend, why = search.choose_backend(200_000, 2048, "auto", "cpu")
    assert backend == "torch" and "faiss-ivf" in why  # auto stays exact, and says why it may be slow
    assert search.choose_backend(10, 4, "faiss-hnsw", "cpu") == ("faiss-hnsw", None)
    with pytest.raises(ReidctlError, match="unknown kNN backend 'annoy'"):
        search.choose_backend(10, 4, "annoy")
    monkeypatch.setitem(sys.modules, "faiss", None)  # faiss missing
    with pytest.raises(ReidctlError, match=r"--knn-backend faiss-ivf needs faiss: pip install 'reidctl\[faiss\]'"):
        approx_knn(torch.from_numpy(_blobs()[0]), 5, "faiss-ivf")


def _features_file(path, x, pid):
    write_features(path, x, camids=np.arange(len(x)) % 3, paths=[f"{i:05d}.jpg" for i in range(len(x))],
                   split=["train"] * len(x), pids=pid)
    return path


def test_cluster_cli_with_an_approximate_backend(tmp_path):
    pytest.importorskip("faiss")
    x, pid = _blobs()
    f = _features_file(tmp_path / "f.h5", x, pid)
    res = json.loads(run_ok("cluster", f, "--out", tmp_path / "l.h5", "--knn-backend", "faiss-hnsw", "--k1", "10",
                            "--device", "cpu", "--json").stdout)
    assert res["knn_backend"] == "faiss-hnsw" and res["clusters"] > 10
    run_error("cluster", f, "--out", tmp_path / "x.h5", "--knn-backend", "annoy", match="--knn-backend annoy: choose one")


@pytest.mark.slow
def test_cluster_under_torchrun_equals_one_process(tmp_path):
    x, pid = _blobs(n=900)
    f = _features_file(tmp_path / "f.h5", x, pid)
    common = ["--k1", "10", "--k2", "3", "--device", "cpu", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "reidctl",
           "cluster", str(f), "--out", str(tmp_path / "two.h5"), *common]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["world_size"] == 2  # rank 0 alone prints
    run_ok("cluster", f, "--out", tmp_path / "one.h5", *common)
    one, two = read_labels(tmp_path / "one.h5"), read_labels(tmp_path / "two.h5")
    np.testing.assert_array_equal(one.labels, two.labels)
    for name in ("knn_index", "knn_dist"):
        np.testing.assert_array_equal(one.extra[name], two.extra[name])
    assert (one.extra["jaccard"] != two.extra["jaccard"]).nnz == 0
