"""Mixed Jaccard distance over several feature branches (NCPLR, ALGORITHMS.md §7.2).

Parity: every sparse mixture is compared with the dense mixture it stands for (each J_b filled
with its implicit 1.0, mixed densely), and the clustering on it with scikit-learn on the dense
matrix.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import DBSCAN, AgglomerativeClustering

from reidctl import search
from reidctl.artifacts import read_labels, write_features
from reidctl.cluster import agglomerative, dbscan, jaccard_distance
from reidctl.cluster.mixing import branch_features, mix_jaccard, parse_branches
from reidctl.cluster.clustering import ClusterParams, cluster_features
from reidctl.errors import ReidctlError
from tests.clitools import run_error, run_ok

NCPLR = "global=0.6,part0=0.2,part1=0.2"
WEIGHTS = [0.6, 0.2, 0.2]
K1, K2, EPS, MIN_SAMPLES = 8, 3, 0.5, 3


# ---------------------------------------------------------------------------------------------
# helpers: the dense matrices the sparse ones stand for


def _csr(n: int, entries: dict[tuple[int, int], float]) -> sp.csr_matrix:
    """CSR from its arrays (so explicit zeros stay stored), rows and columns ascending."""
    keys = sorted(entries)
    rows = np.array([r for r, _ in keys], np.int64)
    indptr = np.searchsorted(rows, np.arange(n + 1)).astype(np.int32)
    return sp.csr_matrix((np.array([entries[k] for k in keys], np.float32),
                          np.array([c for _, c in keys], np.int32), indptr), shape=(n, n))


def _stored(m: sp.csr_matrix) -> np.ndarray:
    """Boolean N×N mask of the stored entries, read from the CSR arrays (zeros included)."""
    n = m.shape[0]
    mask = np.zeros(m.shape, bool)
    mask[np.repeat(np.arange(n), np.diff(m.indptr)), m.indices] = True
    return mask


def _dense(m: sp.csr_matrix, fill: float = 1.0) -> np.ndarray:
    """The dense float32 matrix a sparse one stands for: unstored entries = ``fill``."""
    n = m.shape[0]
    d = np.full(m.shape, np.float32(fill), np.float32)
    d[np.repeat(np.arange(n), np.diff(m.indptr)), m.indices] = m.data
    return d


def _dense_mix(mats: list[sp.csr_matrix], weights: list[float]) -> np.ndarray:
    """The reference: Σ_b w_b·dense(J_b) in float64, branch by branch, rounded to float32."""
    acc = np.zeros(mats[0].shape, np.float64)
    for w, m in zip(weights, mats):
        acc += w * _dense(m).astype(np.float64)
    return acc.astype(np.float32)


def _check_against_dense(mats: list[sp.csr_matrix], weights: list[float]) -> sp.csr_matrix:
    """mix_jaccard equals the dense mixture, stores exactly its entries below Σw (zeros and
    the diagonal included), in CSR form with sorted rows and float32 values."""
    out = mix_jaccard(mats, weights)
    implicit = np.float32(math.fsum(weights))
    ref = _dense_mix(mats, weights)
    assert isinstance(out, sp.csr_matrix) and out.dtype == np.float32
    assert out.has_sorted_indices
    np.testing.assert_array_equal(_dense(out, implicit), ref)
    np.testing.assert_array_equal(_stored(out), ref != implicit)
    union = np.logical_or.reduce([_stored(m) for m in mats])
    assert not (_stored(out) & ~union).any()  # nothing outside the inputs' patterns
    zeros = _stored(out) & (_dense(out, implicit) == 0)
    np.testing.assert_array_equal(zeros, ref == 0)  # every zero of the mixture is stored
    assert np.diag(_stored(out)).all()
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _branches(n: int = 240, d: int = 16, ids: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Global N×D and parts N×2×D features of the same identities, each space with its own noise;
    rows 1 and 2 are the same image (identical in every branch)."""
    rng = np.random.default_rng(seed)
    pid = rng.integers(0, ids, n)
    spaces = []
    for _ in range(3):
        centres = rng.standard_normal((ids, d))
        spaces.append(_unit(centres[pid] + 0.9 * rng.standard_normal((n, d))))
    feats, parts = spaces[0], np.stack(spaces[1:], axis=1)
    feats[2], parts[2] = feats[1], parts[1]
    return feats, parts


def _jaccards(feats: np.ndarray, parts: np.ndarray) -> list[sp.csr_matrix]:
    return [jaccard_distance(x, K1, K2) for x in (feats, parts[:, 0], parts[:, 1])]


# ---------------------------------------------------------------------------------------------
# mix_jaccard


def test_hand_built_mixture():
    """3×3 by hand, weights 0.75/0.25: J_a = 0.4 at (0,1); J_b = 0.2 at (0,1) and an explicit 0
    at (1,2) (two identical neighbourhoods); (0,2) is stored in neither."""
    diag = {(i, i): 0.0 for i in range(3)}
    a = _csr(3, {**diag, (0, 1): 0.4, (1, 0): 0.4})
    b = _csr(3, {**diag, (0, 1): 0.2, (1, 0): 0.2, (1, 2): 0.0, (2, 1): 0.0})
    out = _check_against_dense([a, b], [0.75, 0.25])
    expected = np.array([[0, 0.35, 1], [0.35, 0, 0.75], [1, 0.75, 0]], np.float32)
    np.testing.assert_allclose(_dense(out), expected, rtol=0, atol=1e-7)
    # pattern = union: diagonal, (0,1), (1,2) and their mirrors; (0,2) left implicit
    np.testing.assert_array_equal(out.indptr, [0, 2, 5, 7])
    np.testing.assert_array_equal(out.indices, [0, 1, 0, 1, 2, 1, 2])
    assert (out.data == 0).sum() == 3  # the diagonal: 0 in both branches, still stored


def test_stored_zero_in_every_branch_survives():
    """Duplicate images: 0 in both branches → 0 in the mixture, stored (not read back as 1)."""
    both = _csr(2, {(0, 0): 0.0, (0, 1): 0.0, (1, 0): 0.0, (1, 1): 0.0})
    out = _check_against_dense([both, both], [0.5, 0.5])
    assert out.nnz == 4 and not out.data.any()


def test_entry_that_rounds_to_the_implicit_value_is_not_stored():
    """0.25·(1 − 2⁻²⁴) + 0.75·1 rounds to 1.0 in float32: like jaccard_distance's 1s, left out."""
    below_one = np.nextafter(np.float32(1), np.float32(0))
    diag = {(i, i): 0.0 for i in range(2)}
    a = _csr(2, {**diag, (0, 1): below_one, (1, 0): 0.5})
    out = _check_against_dense([_csr(2, diag), a], [0.75, 0.25])
    np.testing.assert_array_equal(out.indices, [0, 0, 1])  # (0, 1) dropped, (1, 0) = 0.875 kept
    np.testing.assert_array_equal(out.data, np.array([0, 0.875, 0], np.float32))


def test_unsorted_rows_are_mixed_like_sorted_ones():
    """A CSR whose columns are not sorted within rows gives the same mixture."""
    a = _csr(3, {(0, 0): 0.0, (0, 2): 0.3, (1, 1): 0.0, (2, 0): 0.3, (2, 2): 0.0})
    shuffled = sp.csr_matrix((a.data[[1, 0, 2, 4, 3]], a.indices[[1, 0, 2, 4, 3]], a.indptr), shape=a.shape)
    assert not shuffled.has_sorted_indices
    b = _csr(3, {(i, i): 0.0 for i in range(3)} | {(1, 2): 0.5, (2, 1): 0.5})
    expected = mix_jaccard([a, b], [0.5, 0.5])
    out = _check_against_dense([shuffled, b], [0.5, 0.5])
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(out, name), getattr(expected, name))


def test_repeated_entry_is_refused():
    a = sp.csr_matrix((np.array([0.0, 0.2, 0.3], np.float32), np.array([1, 0, 1], np.int32),
                       np.array([0, 3, 3], np.int32)), shape=(2, 2))
    with pytest.raises(ReidctlError, match="same entry twice"):
        mix_jaccard([a, a], [0.5, 0.5])


def test_real_jaccard_of_three_branches():
    """Three Jaccard matrices of random normalised features: the sparse mixture equals the dense
    one entry for entry, the duplicate pair keeps its stored 0, and no dense N×N is needed."""
    feats, parts = _branches()
    mats = _jaccards(feats, parts)
    out = _check_against_dense(mats, WEIGHTS)
    assert _stored(out)[1, 2] and out[1, 2] == 0
    patterns = [set(zip(*m.nonzero())) for m in mats]
    assert len(set.union(*patterns)) > max(map(len, patterns))  # the patterns really differ


@pytest.mark.parametrize(("weights", "match"), [
    ([0.6, 0.2, 0.1], r"must sum to 1, got \[0.6, 0.2, 0.1\] \(sum 0.9\)"),
    ([0.6, 0.2, 0.3], r"must sum to 1"),
    ([1.2, -0.1, -0.1], r"must be positive"),
    ([0.5, 0.5], r"3 Jaccard matrices but 2 weights"),
])
def test_bad_weights_are_refused(weights, match):
    mats = [_csr(2, {(0, 0): 0.0, (1, 1): 0.0})] * 3
    with pytest.raises(ReidctlError, match=match):
        mix_jaccard(mats, weights)


def test_weights_within_tolerance_are_accepted():
    mats = [_csr(2, {(0, 0): 0.0, (1, 1): 0.0})] * 3
    assert mix_jaccard(mats, [0.6, 0.2, 0.2 + 5e-7]).nnz == 2


def test_mismatched_or_dense_matrices_are_refused():
    a = _csr(2, {(0, 0): 0.0, (1, 1): 0.0})
    with pytest.raises(ReidctlError, match="different shapes"):
        mix_jaccard([a, _csr(3, {(0, 0): 0.0})], [0.5, 0.5])
    with pytest.raises(ReidctlError, match="must be sparse CSR, got ndarray"):
        mix_jaccard([a, np.zeros((2, 2), np.float32)], [0.5, 0.5])


# ---------------------------------------------------------------------------------------------
# parse_branches, branch_features


@pytest.mark.parametrize(("spec", "expected"), [
    ("global", [("global", 1.0)]),
    ("part1", [("part1", 1.0)]),
    ("global=1", [("global", 1.0)]),
    (NCPLR, [("global", 0.6), ("part0", 0.2), ("part1", 0.2)]),
    (" part10 = 0.5 , global=0.5 ", [("part10", 0.5), ("global", 0.5)]),
])
def test_parse_branches(spec, expected):
    assert parse_branches(spec) == expected


@pytest.mark.parametrize(("spec", "match"), [
    ("", r"give global, or name=weight pairs"),
    ("global=0.5,,part0=0.5", r"give global, or name=weight pairs"),
    ("global,part0", r"give every branch a weight, e\.g\. global=0\.2"),
    ("global=0.5,global=0.5", r"global given more than once"),
    ("head=1", r"unknown branch 'head'"),
    ("part01=1", r"unknown branch 'part01'"),
    ("Global", r"unknown branch 'Global'"),
    ("global=x", r"weight 'x' of global is not a number"),
    ("global=0.5,part0=0.6", r"--branches 'global=0.5,part0=0.6': branch weights must sum to 1"),
    ("global=0.5", r"must sum to 1"),
    ("global=1.5,part0=-0.5", r"must be positive"),
    ("global=nan", r"must be positive"),
])
def test_parse_branches_refuses(spec, match):
    with pytest.raises(ReidctlError, match=match):
        parse_branches(spec)


def test_branch_features():
    feats, parts = _branches(n=20)
    g = branch_features("global", feats, parts)
    assert g.dtype == np.float32 and g.flags.c_contiguous
    np.testing.assert_array_equal(g, feats)
    p1 = branch_features("part1", feats, parts)
    assert p1.dtype == np.float32 and p1.flags.c_contiguous  # parts[:, 1] itself is strided
    np.testing.assert_array_equal(p1, parts[:, 1])
    with pytest.raises(ReidctlError, match=r"^--branches part1: the features have 0 parts$"):
        branch_features("part1", feats, None)
    with pytest.raises(ReidctlError, match=r"^--branches part2: the features have 2 parts$"):
        branch_features("part2", feats, parts)


# ---------------------------------------------------------------------------------------------
# cluster_features


def _params(**kw) -> ClusterParams:
    return ClusterParams(k1=K1, k2=K2, eps=EPS, min_samples=MIN_SAMPLES, **kw)


def _same_result(a: dict, b: dict) -> None:
    for key in ("labels", "knn_index", "knn_dist"):
        assert a[key].dtype == b[key].dtype
        np.testing.assert_array_equal(a[key], b[key])
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(a["jaccard"], name), getattr(b["jaccard"], name))
    assert a["times"].keys() == b["times"].keys()


def test_global_branch_is_todays_clustering():
    """branches="global" (given or not, parts given or not) is the single-Jaccard pipeline:
    kNN → jaccard_distance → dbscan, bit for bit, with the same timing keys."""
    feats, parts = _branches()
    default = cluster_features(feats, _params())
    _same_result(cluster_features(feats, _params(branches="global"), parts=parts), default)
    dist, idx = search.knn(feats, K1)
    jac = jaccard_distance(feats, K1, K2, knn=(dist, idx))
    manual = {"labels": dbscan(jac, EPS, MIN_SAMPLES).astype(np.int32), "knn_index": idx.astype(np.int32),
              "knn_dist": dist.astype(np.float32), "jaccard": jac, "times": dict.fromkeys(["knn_s", "jaccard_s",
                                                                                          "cluster_s"])}
    _same_result(default, manual)


def test_three_branches_match_sklearn_dbscan_on_the_dense_mixture():
    feats, parts = _branches()
    res = cluster_features(feats, _params(branches=NCPLR), parts=parts)
    dense = _dense_mix(_jaccards(feats, parts), WEIGHTS)  # implicit entries 1.0 > eps
    np.testing.assert_array_equal(_dense(res["jaccard"]), dense)
    expected = DBSCAN(eps=EPS, min_samples=MIN_SAMPLES, metric="precomputed").fit_predict(dense)
    np.testing.assert_array_equal(res["labels"], expected)
    global_only = cluster_features(feats, _params(), parts=parts)
    assert not np.array_equal(res["labels"], global_only["labels"])  # the parts do change the clusters
    assert len(set(expected)) > 3 and (expected == -1).any()  # clusters and outliers: a real check
    np.testing.assert_array_equal(res["knn_index"], global_only["knn_index"])  # the first branch's
    np.testing.assert_array_equal(res["knn_dist"], global_only["knn_dist"])
    for key in ("jaccard_global_s", "jaccard_part0_s", "jaccard_part1_s", "jaccard_mix_s", "knn_s", "cluster_s"):
        assert key in res["times"]


def test_first_branch_gives_the_knn_lists():
    feats, parts = _branches()
    res = cluster_features(feats, _params(branches="part1=0.5,global=0.5"), parts=parts)
    dist, idx = search.knn(parts[:, 1], K1)
    np.testing.assert_array_equal(res["knn_index"], idx)
    np.testing.assert_array_equal(res["knn_dist"], dist)


def test_three_branches_agglomerative_matches_sklearn():
    feats, parts = _branches(n=120)
    res = cluster_features(feats, _params(algo="agglomerative", n_clusters=12, branches=NCPLR), parts=parts)
    dense = _dense_mix(_jaccards(feats, parts), WEIGHTS)
    expected = AgglomerativeClustering(12, metric="precomputed", linkage="average").fit_predict(dense)
    np.testing.assert_array_equal(res["labels"], expected)
    np.testing.assert_array_equal(res["labels"], agglomerative(sp.csr_matrix(dense), 12))


def test_missing_part_branch_is_a_one_line_error():
    feats, _ = _branches(n=40)
    with pytest.raises(ReidctlError, match=r"^--branches part0: the features have 0 parts$"):
        cluster_features(feats, _params(branches=NCPLR))


def test_bad_branches_fail_in_check():
    with pytest.raises(ReidctlError, match="unknown branch 'up'"):
        _params(branches="global=0.6,up=0.4").check()


# ---------------------------------------------------------------------------------------------
# the `cluster` command


def _features_file(path, n=60, with_parts=True):
    feats, parts = _branches(n=n, ids=8)
    write_features(path, feats, camids=np.tile([0, 1], n // 2), paths=[f"{i:03d}.jpg" for i in range(n)],
                   split=["train"] * n, parts=parts if with_parts else None)
    return feats, parts


def test_cluster_command_mixes_branches(tmp_path):
    feats, parts = _features_file(tmp_path / "f.h5")
    args = ("--k1", K1, "--k2", K2, "--eps", EPS, "--min-samples", MIN_SAMPLES, "--json")
    r = run_ok("cluster", tmp_path / "f.h5", "--out", tmp_path / "mix.h5", "--branches", NCPLR, *args)
    summary = json.loads(r.stdout)
    assert "jaccard_part1_s" in summary
    lab = read_labels(tmp_path / "mix.h5")
    assert lab.meta.params["branches"] == NCPLR
    expected = cluster_features(feats, _params(branches=NCPLR), parts=parts)
    np.testing.assert_array_equal(lab.labels, expected["labels"])
    np.testing.assert_array_equal(_dense(lab.extra["jaccard"]), _dense(expected["jaccard"]))
    run_ok("cluster", tmp_path / "f.h5", "--out", tmp_path / "global.h5", *args)
    assert read_labels(tmp_path / "global.h5").meta.params["branches"] == "global"
    assert not np.array_equal(read_labels(tmp_path / "global.h5").labels, lab.labels)


def test_cluster_command_refuses_bad_branches(tmp_path):
    _features_file(tmp_path / "f.h5", with_parts=False)
    common = ("cluster", tmp_path / "f.h5", "--out", tmp_path / "l.h5", "--k1", K1, "--k2", K2)
    run_error(*common, "--branches", "global=0.6,part0=0.2,part1=0.2",
              match=r"f\.h5: --branches part0: the features have 0 parts$")
    run_error(*common, "--branches", "global=0.5,part0=0.4", match=r"branch weights must sum to 1")
    assert not (tmp_path / "l.h5").exists()
