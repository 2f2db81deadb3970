"""Exact kNN: agreement with a brute-force sort, block-size invariance, tie order, errors."""

import numpy as np
import pytest
import torch

from reidctl import search
from reidctl.errors import ReidctlError


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = 2 - 2 * x.astype(np.float64) @ x.T.astype(np.float64)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


def test_knn_matches_brute_force():
    x = _unit(300, 32)
    dist, idx = search.knn(x, 10, device="cpu")
    bd, bi = _brute(x, 10)
    assert dist.dtype == np.float32 and idx.dtype == np.int64 and dist.shape == (300, 10)
    np.testing.assert_array_equal(idx, bi)
    np.testing.assert_allclose(dist, np.maximum(bd, 0), atol=1e-5)
    np.testing.assert_array_equal(idx[:, 0], np.arange(300))  # self first, distance 0
    assert np.all(np.diff(dist, axis=1) >= 0)


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_knn_block_size_invariant(block_size):
    x = _unit(200, 16, seed=1)
    ref = search.knn(x, 15, device="cpu")
    got = search.knn(x, 15, device="cpu", block_size=block_size)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_allclose(got[0], ref[0], atol=1e-6)


def test_knn_ties_ordered_by_index():
    # exactly representable unit vectors: every dot product is exact, ties are real ties
    base = np.zeros((8, 4), np.float32)
    base[:5] = 0.5  # five identical points (0..4)
    base[5:, 0] = 1.0  # three identical others (5..7)
    for k in (3, 5, 6):
        dist, idx = search.knn(base, k, device="cpu", block_size=3)
        np.testing.assert_array_equal(idx[3][: min(k, 5)], np.arange(min(k, 5)))
        np.testing.assert_array_equal(idx[6][:3], [5, 6, 7])
        if k == 6:  # the sixth neighbour of a point of the first group ties among 5..7
            assert idx[0][5] == 5
            np.testing.assert_allclose(dist[0][5], 2 - 2 * 0.5, atol=0)


def test_knn_progress_reports_rows():
    calls = []
    search.knn(_unit(50, 8), 5, device="cpu", block_size=16, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(16, 50), (32, 50), (48, 50), (50, 50)]


def test_knn_accepts_tensors_and_k_equal_n():
    x = torch.from_numpy(_unit(20, 8, seed=2))
    dist, idx = search.knn(x, 20, backend="torch", device="cpu")
    assert sorted(idx[0].tolist()) == list(range(20))


def test_knn_errors():
    x = _unit(10, 4)
    with pytest.raises(ReidctlError, match="k must be"):
        search.knn(x, 11)
    with pytest.raises(ReidctlError, match="L2-normalised"):
        search.knn(x * 2, 3)
    with pytest.raises(ReidctlError, match="backend"):
        search.knn(x, 3, backend="annoy")


@pytest.mark.skipif(search.faiss_gpu_available(), reason="faiss-gpu is installed here")
def test_faiss_backend_without_faiss_gpu_is_a_clear_error():
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(ReidctlError, match="faiss"):
            search.knn(_unit(10, 4), 3, backend="faiss")
    else:
        with pytest.raises(ReidctlError, match="GPU"):
            search.knn(_unit(10, 4), 3, backend="faiss", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_knn_cuda_matches_cpu():
    x = _unit(500, 64, seed=3)
    c = search.knn(x, 12, backend="torch", device="cpu")
    g = search.knn(x, 12, backend="torch", device="cuda")
    np.testing.assert_array_equal(g[1], c[1])
    np.testing.assert_allclose(g[0], c[0], atol=1e-5)


@pytest.mark.skipif(not search.faiss_gpu_available(), reason="needs faiss-gpu and a GPU")
def test_knn_faiss_gpu_matches_torch():
    x = _unit(500, 64, seed=4)
    t = search.knn(x, 12, backend="torch", device="cpu")
    f = search.knn(x, 12, backend="faiss")
    np.testing.assert_array_equal(f[1], t[1])
    np.testing.assert_allclose(f[0], t[0], atol=1e-4)
