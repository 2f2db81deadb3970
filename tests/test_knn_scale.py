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
from reidctl.search.approx import ApproxSettings, approx_knn, exact_rerank
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
    d, i = exact_rerank(x, np.array([0]), cand, 3, torch.device("cpu"))
    assert i.tolist() == [[0, 1, 3]]
    np.testing.assert_allclose(d, [[0.0, 0.8, 0.8]], atol=1e-6)


def test_backend_choice_and_errors(monkeypatch):
    assert search.choose_backend(2000, 128, "auto", "cpu") == ("torch", None)
    assert search.choose_backend(110_000, 2048, "auto", "cpu") == ("torch", None)  # 2.48e13 ≤ the budget
    assert search.choose_backend(10, 4, "torch", "cpu") == ("torch", None)
    assert search.choose_backend(10, 4, "faiss-hnsw", "cpu") == ("faiss-hnsw", None)
    with pytest.raises(ReidctlError, match="unknown kNN backend 'annoy'"):
        search.choose_backend(10, 4, "annoy")
    if search.faiss_available():  # beyond the budget auto switches, and says so
        backend, why = search.choose_backend(1_000_000, 2048, "auto", "cpu")
        assert backend == "faiss-hnsw"
        assert why.startswith("--knn-backend auto: exact kNN of 1,000,000 × 1,000,000 × 2048 (2.0e+15")
        assert "using faiss-hnsw" in why and "--knn-backend torch keeps exact search" in why
    monkeypatch.setitem(sys.modules, "faiss", None)  # faiss missing: exact, with the reason
    backend, why = search.choose_backend(1_000_000, 2048, "auto", "cpu")
    assert backend == "torch" and "need faiss (pip install 'reidctl[faiss]'); searching exactly" in why
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


def test_auto_switches_beyond_the_budget_and_says_so(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    x, pid = _blobs()
    f = _features_file(tmp_path / "f.h5", x, pid)
    monkeypatch.setitem(search.EXACT_BUDGET, "cpu", 1.0)  # every size is "too large" now
    monkeypatch.setattr("reidctl.search.tuning.BUDGET_SHARE", float("inf"))  # the tuning may take its time
    res = run_ok("cluster", f, "--out", tmp_path / "l.h5", "--k1", "10", "--device", "cpu")
    assert "--knn-backend auto: exact kNN of 600 × 600 × 32" in res.stderr and "using faiss-hnsw" in res.stderr
    lab = read_labels(tmp_path / "l.h5")
    summary = json.loads(lab.meta.attrs["summary"])
    assert summary["knn_backend"] == "faiss-hnsw" and summary["knn_probe"]["recall"] >= 0.98
    st = ApproxSettings(**{k: v for k, v in summary["knn_tuning"]["settings"].items()})
    d, i = approx_knn(torch.from_numpy(x), 10, "faiss-hnsw", settings=st)  # the lists it stored are that search's
    assert (lab.extra["knn_index"] == i).mean() > 0.99  # (faiss builds its graph with threads)


#: How far a distance of the sharded search may differ from one process's: the GEMM of a block of
#: rows may round differently from the GEMM of all of them. Bit-equal with MKL's AVX2 code; under
#: MKL_ENABLE_INSTRUCTIONS=SSE4_2 MKL_CBWR=COMPATIBLE (.ci/run's second pass) 3.6e-7 measured.
SHARDED_DISTANCE_TOL = 2e-6


@pytest.mark.slow
def test_cluster_under_torchrun_equals_one_process(tmp_path, one_thread):
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
    np.testing.assert_array_equal(one.extra["knn_index"], two.extra["knn_index"])
    np.testing.assert_allclose(one.extra["knn_dist"], two.extra["knn_dist"], rtol=0, atol=SHARDED_DISTANCE_TOL)
    np.testing.assert_allclose(_dense(one.extra["jaccard"]), _dense(two.extra["jaccard"]), rtol=0,
                               atol=SHARDED_DISTANCE_TOL)


def _dense(j) -> np.ndarray:
    """A sparse Jaccard matrix with its unstored entries as 1."""
    d = np.ones(j.shape, np.float32)
    coo = j.tocoo()
    d[coo.row, coo.col] = coo.data
    return d


def test_jaccard_keep_stores_exactly_the_entries_up_to_the_bound():
    from reidctl.cluster import dbscan, jaccard_distance

    x, _ = _blobs()
    full = jaccard_distance(x, 10, 3)
    bounded = jaccard_distance(x, 10, 3, keep=0.6)
    want = _dense(full)
    want[(want > 0.6) & ~np.eye(len(x), dtype=bool)] = 1  # the bound, by hand on the dense matrix
    np.testing.assert_array_equal(_dense(bounded), want)
    assert bounded.nnz < full.nnz and (np.diff(bounded.indptr) >= 1).all()  # the diagonal stays
    np.testing.assert_array_equal(dbscan(bounded, 0.6, 4), dbscan(full, 0.6, 4))
    with pytest.raises(ReidctlError, match=r"keep=1.5: the Jaccard distances kept must be a bound in \[0, 1\)"):
        jaccard_distance(x, 10, 3, keep=1.5)


def test_cluster_stage_bounds_the_distances_beyond_the_row_limit(monkeypatch):
    from reidctl.cluster import clustering as stage
    from reidctl.cluster.algorithms import dbscan as dbscan_algorithm

    x, _ = _blobs()
    whole = stage.cluster_features(x, stage.ClusterParams(k1=10, k2=3, knn_backend="torch"))
    assert whole["jaccard_keep"] is None and whole["jaccard_note"] is None
    monkeypatch.setattr(dbscan_algorithm, "FULL_JACCARD_ROWS", 500)  # 600 rows are "many" now
    big = stage.cluster_features(x, stage.ClusterParams(k1=10, k2=3, knn_backend="torch"))
    assert big["jaccard_keep"] == pytest.approx(0.6) and big["jaccard_note"].startswith("600 images: the labels keep")
    np.testing.assert_array_equal(big["labels"], whole["labels"])
    assert big["jaccard"].data.max() <= np.float32(0.6) and big["jaccard"].nnz < whole["jaccard"].nnz
    kept = stage.cluster_features(x, stage.ClusterParams(k1=10, k2=3, knn_backend="torch", jaccard_keep=1.0))
    assert kept["jaccard_keep"] is None and (kept["jaccard"] != whole["jaccard"]).nnz == 0


def test_jaccard_keep_bounds_a_mixture_after_mixing():
    from reidctl.cluster import clustering as stage

    x, _ = _blobs()
    parts = np.stack([x[:, ::-1].copy(), x], axis=1)
    params = dict(k1=10, k2=3, knn_backend="torch", branches="global=0.5,part0=0.25,part1=0.25")
    whole = stage.cluster_features(x, stage.ClusterParams(**params), parts=parts)
    bounded = stage.cluster_features(x, stage.ClusterParams(**params, jaccard_keep=0.7), parts=parts)
    want = _dense(whole["jaccard"])
    want[(want > 0.7) & ~np.eye(len(x), dtype=bool)] = 1
    np.testing.assert_array_equal(_dense(bounded["jaccard"]), want)
    np.testing.assert_array_equal(bounded["labels"], whole["labels"])


@pytest.mark.parametrize("options, match", [
    (dict(jaccard_keep=0.5), r"--jaccard-keep 0.5 is below --eps 0.6: DBSCAN would lose neighbours"),
    (dict(jaccard_keep=1.5), r"--jaccard-keep 1.5: must lie in \[0, 1\]"),
    (dict(jaccard_keep=-0.1), r"--jaccard-keep -0.1: must lie in \[0, 1\]"),
    (dict(jaccard_keep=0.9, algo="agglomerative", n_clusters=5), r"does not apply to --algo agglomerative"),
])
def test_jaccard_keep_refusals(options, match):
    from reidctl.cluster.clustering import ClusterParams

    with pytest.raises(ReidctlError, match=match):
        ClusterParams(**options).check()


def test_jaccard_keep_does_not_apply_to_infomap():
    pytest.importorskip("infomap")
    from reidctl.cluster.clustering import ClusterParams

    with pytest.raises(ReidctlError, match="--jaccard-keep does not apply to --algo infomap"):
        ClusterParams(algo="infomap", jaccard_keep=0.7)


def test_jaccard_keep_on_the_command_line(tmp_path):
    x, pid = _blobs()
    f = _features_file(tmp_path / "f.h5", x, pid)
    run_ok("cluster", f, "--out", tmp_path / "l.h5", "--k1", "10", "--k2", "3", "--jaccard-keep", "0.6",
           "--knn-backend", "torch", "--device", "cpu")
    lab = read_labels(tmp_path / "l.h5")
    assert lab.extra["jaccard"].data.max() <= np.float32(0.6)
    assert json.loads(lab.meta.attrs["summary"])["jaccard_keep"] == pytest.approx(0.6)
    run_error("cluster", f, "--out", tmp_path / "m.h5", "--eps", "0.7", "--jaccard-keep", "0.6",
              match="--jaccard-keep 0.6 is below --eps 0.7")


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.6, 0.95])
def test_bounded_min_sum_equals_the_full_min_sum_cut_at_the_bound(keep):
    """The √V·√Vᵀ filter drops no pair: on random row-stochastic V (clustered supports, some
    identical rows, an empty one) the result is the full min-sum's entries ≤ keep, bit for bit."""
    import scipy.sparse as sp

    from reidctl.cluster.jaccard import _min_sum_distance
    from reidctl.cluster.jaccard_bounded import bounded_min_sum

    rng = np.random.default_rng(7)
    n, rows, cols, vals = 300, [], [], []
    same: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.float32))
    for i in range(n):
        if i == 5:
            continue  # an empty row
        group = rng.integers(0, 10)
        support = np.unique(rng.integers(group * 30, group * 30 + 60, rng.integers(3, 25)) % n)
        w = rng.gamma(0.5, size=len(support)).astype(np.float32)
        if i in (7, 8):  # identical neighbourhoods: J = 0 off the diagonal
            support, w = same
        same = support, w
        rows += [i] * len(support)
        cols += support.tolist()
        vals += (w / w.sum()).tolist()
    v = sp.csr_matrix((np.array(vals, np.float32), (rows, cols)), shape=(n, n))
    v.sort_indices()
    full = _min_sum_distance(v, lambda d: None).tocoo()
    cut = (full.data <= np.float32(keep)) | (full.row == full.col)
    want = sp.csr_matrix((full.data[cut], (full.row[cut], full.col[cut])), shape=(n, n))
    got = bounded_min_sum(v, keep, lambda d: None, workers=2)
    assert got.nnz == want.nnz and got.nnz > n  # more than the diagonal survives
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data)  # bit for bit
