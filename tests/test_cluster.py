"""Sparse Jaccard, DBSCAN, agglomerative clustering and label quality.

Parity: ../shared/vectors (official Cluster Contrast outputs), a loop-by-loop port of the
algorithm description (small N), and scikit-learn on the dense matrices.
"""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import DBSCAN, AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

from reidctl import search
from reidctl.cluster import agglomerative, dbscan, jaccard_distance, label_quality
from reidctl.cluster.report import camera_mix, labels_report, merged_cluster_warning, single_camera_warning
from reidctl.errors import ReidctlError

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
JACCARD_FILES = ["jaccard_n2000_k30_k6.npz", "jaccard_n1500_k20_k1.npz"]


def _vector(name: str) -> dict:
    path = VECTORS / name
    if not path.exists():
        pytest.skip(f"reference vectors not found at {path} (../shared is absent)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _dense(j: sp.csr_matrix) -> np.ndarray:
    """The dense matrix a sparse Jaccard result stands for (missing entries = 1)."""
    d = np.ones(j.shape, np.float32)
    c = j.tocoo()
    d[c.row, c.col] = c.data
    return d


def _clustered(n: int, d: int, ids: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, d))
    x = centres[rng.integers(0, ids, n)] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _naive_jaccard(x: np.ndarray, k1: int, k2: int, ncols: int) -> np.ndarray:
    """Dense, one sample at a time, straight from ALGORITHMS.md §3.3."""
    n = len(x)
    d = 2 - 2 * (x.astype(np.float64) @ x.T.astype(np.float64))
    rank = np.argsort(d, axis=1, kind="stable")[:, :ncols]

    def recip(i, k):
        fwd = rank[i, : k + 1]
        return fwd[[i in rank[j, : k + 1] for j in fwd]]

    full = [recip(i, k1) for i in range(n)]
    half = [recip(i, int(np.around(k1 / 2))) for i in range(n)]
    v = np.zeros((n, n))
    for i in range(n):
        e = list(full[i])
        for c in full[i]:
            if len(np.intersect1d(half[c], full[i])) > 2 / 3 * len(half[c]):
                e += list(half[c])
        e = np.unique(e)
        w = np.exp(-d[i, e])
        v[i, e] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    m = np.array([[np.minimum(v[i], v[j]).sum() for j in range(n)] for i in range(n)])
    return np.maximum(1 - m / (2 - m), 0)


@pytest.fixture(scope="module", params=JACCARD_FILES)
def reference(request):
    z = _vector(request.param)
    j = jaccard_distance(z["feats"], int(z["k1"]), int(z["k2"]))
    return z, j


def test_jaccard_matches_reference_vectors(reference):
    z, j = reference
    c = j.tocoo()
    order = np.lexsort((c.col, c.row))
    np.testing.assert_array_equal(c.row[order], z["rows"])
    np.testing.assert_array_equal(c.col[order], z["cols"])
    np.testing.assert_allclose(c.data[order], z["vals"], atol=1e-5, rtol=0)
    assert j.dtype == np.float32 and j.nnz == len(z["vals"])


def test_jaccard_sparse_form(reference):
    z, j = reference
    n = j.shape[0]
    assert j.has_sorted_indices
    assert (j.data < 1).all() and (j.data >= 0).all()
    np.testing.assert_array_equal(j.diagonal(), 0)
    diag = j.tocoo()
    assert ((diag.row == diag.col) & (diag.data == 0)).sum() == n  # stored, not implicit
    t = j.T.tocsr()
    t.sort_indices()
    np.testing.assert_array_equal(t.indptr, j.indptr)  # exactly symmetric, pattern and values
    np.testing.assert_array_equal(t.indices, j.indices)
    np.testing.assert_array_equal(t.data, j.data)


def _duplicate_groups() -> np.ndarray:
    """Rows 0-3: four copies of e0; rows 28-31: four copies of -e0; rows 4-27: three tight clusters
    of eight in the other dimensions, each with a small e0 component (no distance ties)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 7))
    rest = centres[np.repeat(np.arange(3), 8)] + 0.3 * rng.standard_normal((24, 7))
    rest = np.concatenate([0.05 * rng.standard_normal((24, 1)), rest], axis=1)
    e0 = np.eye(8)[0]
    x = np.concatenate([np.repeat(e0[None], 4, 0), rest, np.repeat(-e0[None], 4, 0)])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("k2", [1, 2])
def test_jaccard_keeps_explicit_zeros(k2):
    """Off-diagonal zeros are stored, not dropped: a missing entry means 1, so dropping them would
    turn identical neighbourhoods into the farthest pairs. By hand, with k1 = 6: a group of four
    copies fills the first 4 kNN columns of each member (distance 0), the other two columns hold
    points of the tight clusters, which never list the group back, so each member's expanded set
    is the group, V = 1/4 on it (exact in float32), m = 4 · 1/4 = 1 and J = 1 - 1/(2 - 1) = 0. The
    query expansion averages identical rows (k2 ≤ 4), so this holds for every k2 here."""
    x = _duplicate_groups()
    n = len(x)
    j = jaccard_distance(x, 6, k2, device="cpu")
    ref = _naive_jaccard(x, 6, k2, 6)
    groups = [range(0, 4), range(28, 32)]
    dup = [(a, b) for g in groups for a in g for b in g if a != b]
    for a, b in dup:
        assert ref[a, b] == 0  # the dense reference agrees with the hand computation
    assert ref[0, 28] == 1 and ref[0, 4] == 1  # the groups reach nothing else
    # stored entries = exactly the dense reference's entries below 1, zeros included, same values
    c = j.tocoo()
    stored = {(int(r), int(k)): float(v) for r, k, v in zip(c.row, c.col, c.data)}
    assert len(stored) == j.nnz
    assert set(stored) == {(int(r), int(k)) for r, k in np.argwhere(ref < 1)}
    np.testing.assert_allclose([stored[key] for key in sorted(stored)], [ref[key] for key in sorted(stored)],
                               atol=1e-6, rtol=0)
    for a, b in dup:  # each of the 24 off-diagonal zeros, stored explicitly with value 0
        assert stored[(a, b)] == 0.0, (a, b)
    assert stored[(1, 2)] == 0.0 and stored[(30, 28)] == 0.0
    assert (0, 28) not in stored and (3, 4) not in stored  # J = 1 is left out
    off = {key for key, v in stored.items() if v == 0 and key[0] != key[1]}
    if k2 == 1:  # no other pair has an identical neighbourhood: exactly the groups' zeros
        assert off == set(dup)
        assert off == {(int(r), int(k)) for r, k in np.argwhere((ref == 0) & ~np.eye(n, dtype=bool))}
    else:
        assert off >= set(dup)
    # the zeros survive what consumers do with the matrix: row slices, the upper triangle
    top = j[:4].tocoo()
    assert sorted(zip(top.row[top.data == 0].tolist(), top.col[top.data == 0].tolist())) == sorted(
        [(a, b) for a in range(4) for b in range(4)])
    upper = sp.triu(j, k=1).tocoo()
    zeros = set(zip(upper.row[upper.data == 0].tolist(), upper.col[upper.data == 0].tolist()))
    assert zeros >= {(a, b) for a, b in dup if a < b} and len(zeros) == len(off) // 2
    assert _dense(j)[0, 1] == 0.0  # what a consumer reading missing entries as 1 sees


def test_jaccard_keeps_explicit_zeros_of_the_reference_vectors():
    z = _vector("jaccard_n2000_k30_k6.npz")
    ref_zeros = int(((z["vals"] == 0) & (z["rows"] != z["cols"])).sum())
    assert ref_zeros > 0  # query expansion makes identical neighbourhoods
    j = jaccard_distance(z["feats"], 30, 6)
    c = j.tocoo()
    off = (c.data == 0) & (c.row != c.col)
    off_zeros = int(off.sum())
    # float64 sums round some m ≈ 1 to exactly 1 where the float32 reference kept 1 − 6e−8,
    # so the counts differ slightly; every one of them must be stored
    assert off_zeros > 0.8 * ref_zeros
    # the off-diagonal zeros (not only the diagonal) survive row slicing and the upper triangle
    head = j[:100].tocoo()
    assert int(((head.data == 0) & (head.row != head.col)).sum()) == int((off & (c.row < 100)).sum()) > 0
    assert (sp.triu(j, k=1).data == 0).sum() == off_zeros // 2 > 0


@pytest.mark.parametrize(("k1", "k2", "variant"), [(6, 3, "cc"), (5, 1, "cc"), (6, 3, "original"),
                                                   (7, 2, "original")])
def test_jaccard_matches_naive_port(k1, k2, variant):
    x = _clustered(120, 8, ids=12, noise=0.6, seed=k1 + k2)
    ncols = k1 if variant == "cc" else k1 + 1
    j = jaccard_distance(x, k1, k2, variant=variant, device="cpu")
    np.testing.assert_allclose(_dense(j), _naive_jaccard(x, k1, k2, ncols), atol=1e-5)


def test_jaccard_reuses_precomputed_knn():
    z = _vector("jaccard_n1500_k20_k1.npz")
    knn = search.knn(z["feats"], 40, device="cpu")  # wider than needed: first k1 columns used
    a = jaccard_distance(z["feats"], 20, 1, knn=knn)
    b = jaccard_distance(z["feats"], 20, 1)
    assert (a != b).nnz == 0 and a.nnz == b.nnz
    with pytest.raises(ReidctlError, match="precomputed kNN"):
        jaccard_distance(z["feats"], 20, 1, knn=(knn[0][:, :5], knn[1][:, :5]))


def test_jaccard_independent_of_threads_and_block_sizes(monkeypatch):
    import reidctl.cluster.jaccard as jm

    x = _clustered(500, 16, ids=30, noise=0.5, seed=5)
    ref = jaccard_distance(x, 12, 4, workers=1)
    monkeypatch.setattr(jm, "_ACCUMULATOR_ELEMENTS", 1200)  # 2 rows per block
    monkeypatch.setattr(jm, "_TRIPLES_PER_BLOCK", 300)  # often 1 row per block
    monkeypatch.setattr(jm, "_SCRATCH_ELEMENTS", 3000)
    got = jaccard_distance(x, 12, 4, workers=3)
    for a in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, a), getattr(ref, a))


def test_jaccard_with_duplicates_keeps_zero_diagonal():
    x = np.zeros((12, 4), np.float32)
    x[:8, 0] = 1  # eight identical samples: some are not among their own 3 nearest
    x[8:, 1] = 1
    j = jaccard_distance(x, 3, 1)
    np.testing.assert_array_equal(j.diagonal(), 0)
    assert j.nnz >= 12


def test_jaccard_progress_and_errors():
    x = _clustered(60, 8, ids=6, noise=0.5, seed=0)
    calls = []
    jaccard_distance(x, 5, 2, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1] == (120, 120)
    with pytest.raises(ReidctlError, match="k2"):
        jaccard_distance(x, 5, 6)
    with pytest.raises(ReidctlError, match="variant"):
        jaccard_distance(x, 5, 2, variant="zhong")
    with pytest.raises(ReidctlError, match="normalised"):
        jaccard_distance(x * 3, 5, 2)


def test_dbscan_reproduces_reference_labels(reference):
    z, j = reference
    labels = dbscan(j, float(z["eps"]), min_samples=4)
    assert adjusted_rand_score(z["labels"], labels) == 1.0
    np.testing.assert_array_equal(labels == -1, z["labels"] == -1)
    sk = DBSCAN(eps=float(z["eps"]), min_samples=4, metric="precomputed").fit_predict(_dense(j))
    np.testing.assert_array_equal(labels, sk)  # same numbering as sklearn, not only partition


@pytest.mark.parametrize("seed", range(4))
def test_dbscan_sparse_equals_dense_sklearn(seed):
    x = _clustered(400, 6, ids=25, noise=0.35 + 0.1 * seed, seed=seed)
    j = jaccard_distance(x, 10, 3)
    for eps in (0.3, 0.5, 0.7, 0.9):
        for min_samples in (1, 3, 4, 8):
            got = dbscan(j, eps, min_samples)
            want = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(
                _dense(j))
            np.testing.assert_array_equal(got, want)


def test_dbscan_counts_explicit_zeros_and_handles_asymmetry():
    # 0–1–2 linked only through explicit zeros; 3 alone
    rows, cols = [0, 1, 1, 2, 0, 1, 2, 3], [1, 0, 2, 1, 0, 1, 2, 3]
    d = sp.csr_matrix((np.zeros(8, np.float32), (rows, cols)), shape=(4, 4))
    assert d.nnz == 8
    np.testing.assert_array_equal(dbscan(d, 0.5, min_samples=2), [0, 0, 0, -1])
    rng = np.random.default_rng(0)
    a = rng.random((60, 60)).astype(np.float32)  # asymmetric: falls back to sklearn's order
    np.fill_diagonal(a, 0)
    dense = np.where(a < 0.9, a, 1).astype(np.float32)
    r, c = np.nonzero(dense < 1)
    s = sp.csr_matrix((dense[r, c], (r, c)), shape=a.shape)
    want = DBSCAN(eps=0.2, min_samples=3, metric="precomputed").fit_predict(dense)
    np.testing.assert_array_equal(dbscan(s, 0.2, 3), want)


def test_dbscan_rejects_eps_not_below_one(reference):
    _, j = reference
    with pytest.raises(ReidctlError, match="eps"):
        dbscan(j, 1.0)


@pytest.mark.parametrize("n_clusters", [1, 7, 60, 299])
def test_agglomerative_matches_sklearn(n_clusters):
    x = _clustered(300, 8, ids=40, noise=0.5, seed=n_clusters)
    j = jaccard_distance(x, 8, 3)
    dense = _dense(j)
    want = AgglomerativeClustering(n_clusters=n_clusters, metric="precomputed",
                                   linkage="average").fit_predict(dense)
    np.testing.assert_array_equal(agglomerative(j, n_clusters), want)
    np.testing.assert_array_equal(agglomerative(dense, n_clusters), want)


def test_agglomerative_on_reference_jaccard():
    z = _vector("jaccard_n1500_k20_k1.npz")
    j = jaccard_distance(z["feats"], 20, 1)
    want = AgglomerativeClustering(n_clusters=300, metric="precomputed",
                                   linkage="average").fit_predict(_dense(j))
    got = agglomerative(j, 300)
    np.testing.assert_array_equal(got, want)


def test_agglomerative_memory_check():
    j = sp.eye(1000, format="csr", dtype=np.float32)
    with pytest.raises(ReidctlError, match=r"needs about .* GiB.*about \d+ samples"):
        agglomerative(j, 10, memory_limit=1_000_000)
    with pytest.raises(ReidctlError, match="GiB"):
        agglomerative(sp.csr_matrix((10**7, 10**7), dtype=np.float32), 10)  # 10⁷ samples: ~800 TB
    with pytest.raises(ReidctlError, match="n_clusters"):
        agglomerative(j, 0)


def test_label_quality_hand_made():
    gt = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    perfect = label_quality(np.array([5, 5, 5, 3, 3, 9, 9, 9]), gt)
    assert perfect["precision"] == perfect["recall"] == perfect["f_score"] == 1.0
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)
    assert perfect["n_clusters"] == 3 and perfect["n_outliers"] == 0

    # one cluster of everything: every true pair found, 3+1+3 = 7 of 28 pairs are right
    merged = label_quality(np.zeros(8, int), gt)
    assert merged["recall"] == 1.0 and merged["precision"] == pytest.approx(7 / 28)
    assert merged["f_score"] == pytest.approx(2 * (7 / 28) / (1 + 7 / 28))

    # outliers: sample 2 and 7 unclustered, 4 joined wrongly with pid 2
    labels = np.array([0, 0, -1, 1, 2, 2, 2, -1])
    q = label_quality(labels, gt)
    # as singletons: predicted pairs (0,1) (4,5) (4,6) (5,6) → right: (0,1) (5,6)
    assert q["precision"] == pytest.approx(2 / 4)
    assert q["recall"] == pytest.approx(2 / 7)
    assert q["n_outliers"] == 2 and q["n_clusters"] == 3 and q["outlier_fraction"] == 0.25
    # over the six clustered samples: same predicted pairs; true pairs (0,1) (3,4) (5,6)
    assert q["clustered_precision"] == pytest.approx(2 / 4)
    assert q["clustered_recall"] == pytest.approx(2 / 3)

    none = label_quality(np.full(4, -1), np.array([0, 0, 1, 1]))
    assert none["precision"] == 1.0 and none["recall"] == 0.0 and none["f_score"] == 0.0
    assert none["n_clusters"] == 0 and np.isnan(none["clustered_nmi"])
    with pytest.raises(ReidctlError, match="^3 labels but 4 ground-truth pids$"):
        label_quality(np.zeros(3), np.zeros(4))


def test_camera_mix_hand_made():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, -1])
    cams = np.array([1, 1, 2, 3, 3, 1, 3, 2])
    mix = camera_mix(labels, cams)
    # cluster 0 spans cameras 1 and 2, cluster 2 cameras 1 and 3; cluster 1 is camera 3 only.
    # same-cluster pairs: 3 + 1 + 1 = 5, of which (0,2) (1,2) (5,6) cross cameras
    assert mix == {"cameras": 3, "multi_camera_clusters": 2, "cross_camera_pairs": pytest.approx(3 / 5)}
    assert camera_mix(labels, np.where(cams == 2, -1, cams)) is None  # an unknown camera
    assert camera_mix(labels, np.ones(8, int)) is None  # one camera
    assert camera_mix(np.full(8, -1), cams)["multi_camera_clusters"] == 0
    with pytest.raises(ReidctlError, match="^8 labels but 5 camera ids$"):
        camera_mix(labels, cams[:5])


def test_labels_report_and_single_camera_warning():
    gt = np.array([0, 0, 1, 1])
    cams = np.array([0, 1, 0, 1])
    per_camera = labels_report(np.array([0, 1, 2, 3]), cams, gt)  # every cluster one camera
    assert per_camera["clusters"] == 4 and per_camera["outliers"] == 0
    assert per_camera["camera_mix"]["multi_camera_clusters"] == 0 and per_camera["quality"]["precision"] == 1.0
    assert "none of the 4 pseudo identities spans two of the 2 cameras" in single_camera_warning(per_camera)
    right = labels_report(np.array([0, 0, 1, -1]), cams, None)
    assert "quality" not in right and right["camera_mix"]["multi_camera_clusters"] == 1
    assert single_camera_warning(right) is None
    assert single_camera_warning(labels_report(np.full(4, -1), cams, None)) is None  # no clusters at all
    assert "camera_mix" not in labels_report(np.array([0, 0, 1, 1]), np.full(4, -1), None)


def test_a_cluster_that_swallows_many_people_is_warned_about():
    """Sizes 300, 20 × 10 and 30 outliers: the largest holds 300 of 500 clustered images (60 %)
    and 30 times the median (10). Even sizes, or a large cluster among large ones, are not warned about."""
    labels = np.concatenate([np.zeros(300), np.repeat(np.arange(1, 21), 10), np.full(30, -1)]).astype(int)
    report = labels_report(labels, np.zeros(len(labels), int), None)
    assert report["sizes"] == {"largest": 300, "median": 10.0, "clustered": 500}
    assert merged_cluster_warning(report) == (
        "warning: one of the 21 pseudo identities holds 300 of the 500 clustered images (60 %; the median one 10): "
        "the clustering chains different people together on these features; a smaller --eps (DBSCAN) or more "
        "--n-clusters splits it (docs/guide.md: Camera mix)")
    assert merged_cluster_warning(labels_report(np.repeat(np.arange(50), 10), np.zeros(500, int), None)) is None
    # 5 % of 2,000 clustered images is 100: a cluster of 99, 11 times the median, stays quiet
    quiet = np.concatenate([np.zeros(99), np.repeat(np.arange(1, 212), 9)]).astype(int)
    assert labels_report(quiet, np.zeros(len(quiet), int), None)["sizes"]["clustered"] == 99 + 211 * 9
    assert merged_cluster_warning(labels_report(quiet, np.zeros(len(quiet), int), None)) is None
    assert merged_cluster_warning({"clusters": 3, "outliers": 0}) is None  # a report of an older run
    assert "sizes" not in labels_report(np.full(4, -1), np.zeros(4, int), None)
