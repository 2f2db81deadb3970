"""Tests of reidctl.evaluation.metrics: parity with the reference vectors, hand-made cases, re-ranking."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import reidctl.evaluation.metrics as E
from reidctl.errors import ReidctlError
from reidctl.evaluation.metrics import evaluate_features, evaluate_ranking, pairwise_distance, re_ranking
from tests.conftest import shared_path

# ----------------------------------------------------------------------------------------------
# a plain per-query reference (loops, stable argsort, scikit-learn), to check the vectorised code
# ----------------------------------------------------------------------------------------------


def _valid_mask(qp, qc, g_pids, g_cams, pairs):
    if pairs == "market":
        return ~((g_pids == qp) & (g_cams == qc) & (g_cams >= 0))
    if pairs == "cross-camera":
        return g_cams != qc
    return g_cams == qc


def reference(dist, q_pids, g_pids, q_cams, g_cams, pairs="market", max_rank=50):
    out = {k: [] for k in ("sklearn", "ranked", "trapezoid", "matlab", "inp", "first")}
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        valid = _valid_mask(q_pids[i], q_cams[i], g_pids[order], g_cams[order], pairs)
        hits = (g_pids[order] == q_pids[i])[valid] & (q_pids[i] >= 0)
        if not hits.any():
            continue
        ranks = np.flatnonzero(hits)
        n = len(ranks)
        out["sklearn"].append(average_precision_score(hits, -dist[i][order][valid]))
        out["ranked"].append(np.mean([(j + 1) / (r + 1) for j, r in enumerate(ranks)]))
        mar = matlab = 0.0
        for j, r in enumerate(ranks):
            cur = (j + 1) / (r + 1)
            mar += ((j / r if j else 1.0) + cur) / 2 / n
            matlab += ((j / r if r else 1.0) + cur) / 2 / n
        out["trapezoid"].append(mar)
        out["matlab"].append(matlab)
        out["inp"].append(n / (ranks[-1] + 1))
        out["first"].append(ranks[0])
    m = min(max_rank, dist.shape[1])
    first = np.array(out["first"])
    cmc = np.array([(first <= k).sum() for k in range(m)]) / max(len(first), 1)
    res = {k: float(np.mean(out[k])) for k in ("sklearn", "ranked", "trapezoid", "matlab", "inp")}
    return res, cmc, len(first)


def random_case(rng, num_q, num_g, ids, cams, integer=False):
    q_pids = rng.integers(0, ids, num_q)
    g_pids = rng.integers(0, ids, num_g)
    q_cams = rng.integers(0, cams, num_q)
    g_cams = rng.integers(0, cams, num_g)
    if integer:  # many ties, also between correct and wrong matches
        dist = rng.integers(0, 6, (num_q, num_g)).astype(np.float32)
    else:
        dist = rng.random((num_q, num_g)).astype(np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams


# ----------------------------------------------------------------------------------------------
# parity with ../shared/vectors/eval_q300_g2000.npz
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_vectors():
    path = shared_path("vectors", "eval_q300_g2000.npz")
    return dict(np.load(path))


def _nudged(data, towards):
    """Distances with every correct match moved just before (or after) the items it ties with."""
    dist = data["distmat"].copy()
    match = data["q_pids"][:, None] == data["g_pids"][None, :]
    dist[match] = np.nextafter(dist[match], np.float32(towards))
    return dist


def test_parity_sklearn_map_exact(eval_vectors):
    # The CC family's AP (scikit-learn, ties grouped) does not depend on the tie order: exact.
    d = eval_vectors
    args = (d["q_pids"], d["g_pids"], d["q_camids"], d["g_camids"])
    res = evaluate_ranking(d["distmat"], *args, ap="sklearn")
    assert res["num_valid_queries"] == 300
    assert abs(res["mAP"] - float(d["sklearn_map"])) < 1e-9


def test_parity_cmc_and_torchreid_map(eval_vectors):
    """torchreid_cmc / cc_cmc / torchreid_map depend on how tied distances are ordered.

    Both reference codes order with NumPy's default unstable (SIMD, CPU-dependent) argsort, which
    no portable convention reproduces: neither a stable sort nor its reverse, nor the scalar
    introsort, matches every tie here. We use a stable sort. What must hold: the two references
    agree; the headline rank-1 is exact; at every rank our CMC equals the references wherever the
    ties cannot matter, and the references lie between the most pessimistic and the most
    optimistic tie orders (which our evaluator computes when the ties are nudged apart).
    """
    d = eval_vectors
    args = (d["q_pids"], d["g_pids"], d["q_camids"], d["g_camids"])
    ref_cmc = d["torchreid_cmc"]
    assert np.allclose(d["cc_cmc"], ref_cmc, atol=1e-6)

    ours = evaluate_ranking(d["distmat"], *args, ap="ranked")
    best = evaluate_ranking(_nudged(d, -np.inf), *args, ap="ranked")
    worst = evaluate_ranking(_nudged(d, np.inf), *args, ap="ranked")
    for res in (ours, best, worst):
        assert res["cmc"].shape == ref_cmc.shape

    assert abs(ours["cmc"][0] - ref_cmc[0]) < 1e-6
    assert np.all(worst["cmc"] <= ref_cmc + 1e-6) and np.all(ref_cmc <= best["cmc"] + 1e-6)
    certain = np.isclose(worst["cmc"], best["cmc"])
    assert certain.sum() >= 25  # 28 of the 50 ranks are tie-independent
    assert np.allclose(ours["cmc"][certain], ref_cmc[certain], atol=1e-6)
    # outside those ranks a single query sits elsewhere inside its tie group
    assert np.abs(ours["cmc"] - ref_cmc).max() <= 1 / 300 + 1e-6

    ref_map = float(d["torchreid_map"])
    assert worst["mAP"] - 1e-9 <= ref_map <= best["mAP"] + 1e-9
    assert abs(ours["mAP"] - ref_map) < 1e-4


def test_ties_in_reference_vectors_matter(eval_vectors):
    # Guards the explanation above: with ties grouped the two mAPs differ as the README says.
    d = eval_vectors
    args = (d["q_pids"], d["g_pids"], d["q_camids"], d["g_camids"])
    skl = evaluate_ranking(d["distmat"], *args, ap="sklearn")["mAP"]
    ranked = evaluate_ranking(d["distmat"], *args, ap="ranked")["mAP"]
    assert abs(skl - ranked) > 1e-4


# ----------------------------------------------------------------------------------------------
# vectorised metrics against the per-query reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("integer", [False, True], ids=["continuous", "ties"])
@pytest.mark.parametrize("pairs", E.PAIRS)
def test_matches_per_query_reference(integer, pairs):
    rng = np.random.default_rng(7 + integer)
    dist, q_pids, g_pids, q_cams, g_cams = random_case(rng, 40, 120, ids=12, cams=3, integer=integer)
    ref, ref_cmc, n_valid = reference(dist, q_pids, g_pids, q_cams, g_cams, pairs)
    assert n_valid > 20
    for ap in E.AP_KINDS:
        res = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, ap=ap, pairs=pairs)
        assert res["num_valid_queries"] == n_valid
        assert res["mAP"] == pytest.approx(ref[ap], abs=1e-12), ap
        assert res["mINP"] == pytest.approx(ref["inp"], abs=1e-12)
        np.testing.assert_allclose(res["cmc"], ref_cmc, atol=1e-12)


def test_sklearn_ap_per_query_with_ties():
    # One query per call, so each AP is compared with scikit-learn on its own.
    rng = np.random.default_rng(3)
    for trial in range(60):
        g = int(rng.integers(2, 60))
        dist = rng.integers(0, 4, (1, g)).astype(np.float64) if trial % 2 else rng.random((1, g))
        g_pids = rng.integers(0, 3, g)
        if not (g_pids == 0).any():
            g_pids[0] = 0
        cams = np.ones(g, dtype=int)  # query camera 0: nothing is filtered
        res = evaluate_ranking(dist, [0], g_pids, [0], cams)
        assert res["mAP"] == pytest.approx(average_precision_score(g_pids == 0, -dist[0]), abs=1e-12)


def test_small_blocks_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(11)
    dist, q_pids, g_pids, q_cams, g_cams = random_case(rng, 30, 50, ids=8, cams=3, integer=True)
    full = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    monkeypatch.setattr(E, "_BLOCK_ELEMS", 60)  # one query row per block, tiny tie sub-blocks
    small = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    assert small["mAP"] == pytest.approx(full["mAP"], abs=1e-12)
    np.testing.assert_allclose(small["cmc"], full["cmc"])
    assert small["mINP"] == pytest.approx(full["mINP"], abs=1e-12)


# ----------------------------------------------------------------------------------------------
# hand-made cases
# ----------------------------------------------------------------------------------------------


def test_trapezoid_and_matlab_ap_by_hand():
    # One query; gallery sorted by distance; correct matches at 0-based ranks 1 and 3.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids = np.array([9, 1, 9, 1, 9])
    args = (dist, [1], g_pids, [0], [1, 1, 1, 1, 1])
    # MAR: j=0 -> (1 + 1/2)/2 ; j=1 -> (1/3 + 2/4)/2 ; mean over the 2 hits
    mar = (0.75 + (1 / 3 + 0.5) / 2) / 2
    assert evaluate_ranking(*args, ap="trapezoid")["mAP"] == pytest.approx(mar)
    # MATLAB: the precision before a first hit at rank 2 is 0/1 = 0, not 1
    assert evaluate_ranking(*args, ap="matlab")["mAP"] == pytest.approx((0.25 + (1 / 3 + 0.5) / 2) / 2)
    assert evaluate_ranking(*args, ap="ranked")["mAP"] == pytest.approx(0.5)
    assert evaluate_ranking(*args, ap="sklearn")["mAP"] == pytest.approx(0.5)
    # first hit at rank 1 (hits at 0 and 2): both trapezoid variants agree
    g2 = np.array([1, 9, 1, 9, 9])
    for kind in ("trapezoid", "matlab"):
        res = evaluate_ranking(dist, [1], g2, [0], [1] * 5, ap=kind)
        assert res["mAP"] == pytest.approx((1.0 + (0.5 + 2 / 3) / 2) / 2)


def test_sklearn_ap_groups_ties_by_hand():
    # a wrong match tied with the only correct match: sklearn counts both at the same threshold
    dist = np.array([[0.2, 0.2, 0.5]])
    args = (dist, [1], [9, 1, 9], [0], [1, 1, 1])
    assert evaluate_ranking(*args, ap="sklearn")["mAP"] == pytest.approx(0.5)
    # stable order puts the wrong match (index 0) first: rank 2
    res = evaluate_ranking(*args, ap="ranked")
    assert res["mAP"] == pytest.approx(0.5) and res["cmc"][0] == 0.0 and res["cmc"][1] == 1.0
    swapped = evaluate_ranking(dist, [1], [1, 9, 9], [0], [1, 1, 1], ap="ranked")
    assert swapped["mAP"] == pytest.approx(1.0) and swapped["cmc"][0] == 1.0


def test_cmc_and_minp_two_queries_by_hand():
    g_pids = np.array([1, 1, 2, 2, 3, 3])
    g_cams = np.array([0, 1, 0, 1, 0, 1])
    dist = np.array(
        [
            # q0 (pid 1, cam 0): g0 same pid+cam is ignored; first (and last) hit g1 at rank 3
            [0.5, 0.4, 0.1, 0.2, 0.3, 0.6],
            # q1 (pid 2, cam 2): hits g2 at rank 0 and g3 at rank 3
            [0.3, 0.9, 0.1, 0.35, 0.2, 0.4],
        ]
    )
    res = evaluate_ranking(dist, [1, 2], g_pids, [0, 2], g_cams)
    np.testing.assert_allclose(res["cmc"], [0.5, 0.5, 0.5, 1.0, 1.0, 1.0])  # length min(50, G)
    assert res["mAP"] == pytest.approx((1 / 4 + (1 + 2 / 4) / 2) / 2)
    assert res["mINP"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert res["num_valid_queries"] == 2
    assert len(evaluate_ranking(dist, [1, 2], g_pids, [0, 2], g_cams, max_rank=3)["cmc"]) == 3


def test_same_identity_same_camera_is_ignored():
    g_pids = np.array([5, 7, 5])
    dist = np.array([[0.0, 0.1, 0.2]])
    res = evaluate_ranking(dist, [5], g_pids, [0], [0, 1, 1])
    # g0 (same pid, same camera) neither helps nor hurts: the hit is g2 behind the miss g1
    np.testing.assert_allclose(res["cmc"], [0.0, 1.0, 1.0])
    assert res["mAP"] == pytest.approx(0.5)
    # in another camera the same image is a hit at rank 1 (hits at ranks 1 and 3)
    res = evaluate_ranking(dist, [5], g_pids, [0], [2, 1, 1])
    assert res["cmc"][0] == 1.0 and res["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    # a same-camera image of ANOTHER identity stays a miss: order g1 (miss), g2, g0
    res = evaluate_ranking(np.array([[0.2, 0.0, 0.1]]), [5], g_pids, [0], [1, 0, 1])
    assert res["cmc"][0] == 0.0 and res["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_queries_without_valid_match_are_skipped():
    g_pids = np.array([1, 2, 3])
    g_cams = np.array([0, 1, 1])
    dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.0, 0.5, 0.5]])
    # q0 pid 2 (hit at rank 1); q1 pid 4 (absent); q2 pid 1 whose only image shares its camera
    res = evaluate_ranking(dist, [2, 4, 1], g_pids, [0, 0, 0], g_cams)
    assert res["num_valid_queries"] == 1
    assert res["mAP"] == pytest.approx(0.5)
    np.testing.assert_allclose(res["cmc"], [0.0, 1.0, 1.0])
    # no valid query at all: NaN metrics rather than an exception
    none = evaluate_ranking(dist[1:2], [4], g_pids, [0], g_cams)
    assert none["num_valid_queries"] == 0 and np.isnan(none["mAP"]) and np.isnan(none["cmc"]).all()


def test_unknown_labels():
    dist = np.array([[0.1, 0.2]])
    # unknown cameras (-1) are never "the same camera" under the market protocol
    res = evaluate_ranking(dist, [3], [3, 4], [-1], [-1, 0])
    assert res["cmc"][0] == 1.0
    # unknown query identity: skipped, even against unknown gallery identities
    assert evaluate_ranking(dist, [-1], [-1, 4], [0], [1, 1])["num_valid_queries"] == 0
    with pytest.raises(ReidctlError, match="camera ids"):
        evaluate_ranking(dist, [3], [3, 4], [-1], [1, 0], pairs="cross-camera")


def test_cross_and_same_camera_pairs():
    g_pids = np.array([1, 1, 2, 1])
    g_cams = np.array([0, 1, 0, 2])
    dist = np.array([[0.1, 0.3, 0.2, 0.4]])  # query pid 1, camera 0
    market = evaluate_ranking(dist, [1], g_pids, [0], g_cams)
    cross = evaluate_ranking(dist, [1], g_pids, [0], g_cams, pairs="cross-camera")
    same = evaluate_ranking(dist, [1], g_pids, [0], g_cams, pairs="same-camera")
    # market: g0 ignored, the miss g2 (camera 0) still counts: order g2, g1, g3
    assert market["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # cross-camera: only g1 and g3 (cameras 1, 2): both hits
    assert cross["mAP"] == pytest.approx(1.0) and cross["cmc"][0] == 1.0
    # same-camera: only g0 (hit) and g2 (miss) from camera 0
    assert same["mAP"] == pytest.approx(1.0) and same["cmc"][0] == 1.0
    far = np.array([[0.3, 0.1, 0.2, 0.0]])
    same_far = evaluate_ranking(far, [1], g_pids, [0], g_cams, pairs="same-camera")
    assert same_far["mAP"] == pytest.approx(0.5) and same_far["cmc"][0] == 0.0


def test_bad_input_is_reported():
    with pytest.raises(ReidctlError, match="NaN"):
        evaluate_ranking(np.array([[np.nan, 0.1]]), [1], [1, 2], [0], [1, 1])
    with pytest.raises(ReidctlError, match="entries"):
        evaluate_ranking(np.zeros((2, 3)), [1, 2], [1, 2], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="ap="):
        evaluate_ranking(np.zeros((1, 2)), [1], [1, 2], [0], [1, 1], ap="voc")
    with pytest.raises(ValueError, match="pairs="):
        evaluate_ranking(np.zeros((1, 2)), [1], [1, 2], [0], [1, 1], pairs="all")


# ----------------------------------------------------------------------------------------------
# features → metrics
# ----------------------------------------------------------------------------------------------


def _clustered(rng, ids=15, per_id=8, queries_per_id=2, dim=16, noise=0.9, cams=3):
    centres = rng.standard_normal((ids, dim))
    g_pids = np.repeat(np.arange(ids), per_id)
    q_pids = np.repeat(np.arange(ids), queries_per_id)

    def feats(pids):
        x = centres[pids] + noise * rng.standard_normal((len(pids), dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return (
        feats(q_pids),
        feats(g_pids),
        q_pids,
        g_pids,
        rng.integers(0, cams, len(q_pids)),
        rng.integers(0, cams, len(g_pids)),
    )


def test_pairwise_distance_formula():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((7, 5)), rng.standard_normal((11, 5))
    d = pairwise_distance(q, g, chunk=3)
    assert d.dtype == np.float32 and d.shape == (7, 11)
    expect = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(d, expect, rtol=1e-5, atol=1e-5)
    with pytest.raises(ReidctlError, match="dimensions"):
        pairwise_distance(q, rng.standard_normal((3, 4)))


@pytest.mark.parametrize("ap", ["sklearn", "trapezoid"])
def test_chunked_features_equal_unchunked(ap, monkeypatch):
    rng = np.random.default_rng(5)
    qf, gf, q_pids, g_pids, q_cams, g_cams = _clustered(rng, noise=1.5)
    args = (q_pids, g_pids, q_cams, g_cams)
    whole = evaluate_ranking(pairwise_distance(qf, gf), *args, ap=ap)
    one = evaluate_features(qf, gf, *args, ap=ap, chunk=10_000)
    monkeypatch.setattr(E, "_BLOCK_ELEMS", 200)  # sub-blocks inside each distance chunk
    chunked = evaluate_features(qf, gf, *args, ap=ap, chunk=7)
    for res in (one, chunked):
        assert res["num_valid_queries"] == whole["num_valid_queries"]
        assert res["mAP"] == pytest.approx(whole["mAP"], abs=1e-12)
        assert res["mINP"] == pytest.approx(whole["mINP"], abs=1e-12)
        np.testing.assert_allclose(res["cmc"], whole["cmc"])


def test_evaluate_features_pairs_and_torch_input():
    import torch

    rng = np.random.default_rng(6)
    qf, gf, *labels = _clustered(rng, noise=1.5)
    for pairs in E.PAIRS:
        a = evaluate_features(torch.from_numpy(qf), torch.from_numpy(gf), *labels, pairs=pairs, chunk=5)
        b = evaluate_ranking(pairwise_distance(qf, gf), *labels, pairs=pairs)
        assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-12)


# ----------------------------------------------------------------------------------------------
# re-ranking
# ----------------------------------------------------------------------------------------------


def rerank_reference(q_g, q_q, g_g, k1, k2, lam):
    """Re-ranking with plain loops and Python sets, straight from the algorithm description."""
    nq = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)
    n = full.shape[0]
    orig = full**2
    orig = orig / orig.max(axis=1, keepdims=True)  # symmetric inputs: row max == column max
    rank = np.argsort(orig, axis=1, kind="stable")

    def recip(i, k):
        fwd = rank[i, : k + 1]
        return [c for c in fwd if i in rank[c, : k + 1]]

    half = int(np.around(k1 / 2))
    v = np.zeros((n, n))
    for i in range(n):
        base = recip(i, k1)
        exp = set(base)
        for c in base:
            hc = recip(c, half)
            if len(set(hc) & set(base)) > 2 / 3 * len(hc):
                exp |= set(hc)
        idx = sorted(exp)
        w = np.exp(-orig[i, idx])
        v[i, idx] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jac = np.zeros((nq, n - nq))
    for i in range(nq):
        for j in range(n - nq):
            m = np.minimum(v[i], v[nq + j]).sum()
            jac[i, j] = 1 - m / (2 - m)
    return (1 - lam) * jac + lam * orig[:nq, nq:]


def _rerank_inputs(rng, **kw):
    qf, gf, *labels = _clustered(rng, **kw)
    return pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf), labels


@pytest.mark.parametrize("k1,k2,lam", [(6, 3, 0.3), (20, 6, 0.3), (5, 1, 0.0), (25, 4, 1.0)])
def test_rerank_matches_loop_reference(k1, k2, lam):
    rng = np.random.default_rng(k1)
    q_g, q_q, g_g, _ = _rerank_inputs(rng, ids=6, per_id=6, queries_per_id=1)
    q_q = (q_q + q_q.T) / 2  # exactly symmetric, so the reference's row max is the column max
    g_g = (g_g + g_g.T) / 2
    got = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    np.testing.assert_allclose(got, rerank_reference(q_g, q_q, g_g, k1, k2, lam), atol=2e-6)


def test_rerank_shapes_and_symmetry():
    rng = np.random.default_rng(1)
    q_g, q_q, g_g, _ = _rerank_inputs(rng, ids=8, per_id=5, queries_per_id=2)
    q_q, g_g = (q_q + q_q.T) / 2, (g_g + g_g.T) / 2
    out = re_ranking(q_g, q_q, g_g)
    assert out.shape == q_g.shape and out.dtype == np.float32
    assert np.all(out >= -1e-6) and np.all(out <= 1 + 1e-6)
    # the Jaccard part is symmetric in the roles of query and gallery
    jac = re_ranking(q_g, q_q, g_g, lambda_value=0.0)
    jac_t = re_ranking(q_g.T, g_g, q_q, lambda_value=0.0)
    np.testing.assert_allclose(jac, jac_t.T, atol=1e-6)
    # λ = 1 keeps the original order of every row
    orig = re_ranking(q_g, q_q, g_g, lambda_value=1.0)
    order = np.argsort(orig, axis=1, kind="stable")
    assert np.array_equal(order, np.argsort(q_g, axis=1, kind="stable"))
    # relabelling the gallery permutes the columns
    perm = rng.permutation(q_g.shape[1])
    out_p = re_ranking(q_g[:, perm], q_q, g_g[np.ix_(perm, perm)])
    np.testing.assert_allclose(out_p, out[:, perm], atol=1e-6)


def test_rerank_helps_on_clustered_features():
    rng = np.random.default_rng(2)
    qf, gf, *labels = _clustered(rng, ids=20, per_id=10, queries_per_id=2, dim=32, noise=1.3)
    plain = evaluate_features(qf, gf, *labels)
    rr = evaluate_features(qf, gf, *labels, rerank=True)
    assert rr["mAP"] > plain["mAP"] + 0.05
    assert rr["cmc"][0] >= plain["cmc"][0]


def test_rerank_memory_limit():
    rng = np.random.default_rng(3)
    qf, gf, *labels = _clustered(rng)
    with pytest.raises(ReidctlError, match="re-ranking .* needs about"):
        evaluate_features(qf, gf, *labels, rerank=True, rerank_max_bytes=1000)
    q_g, q_q, g_g, _ = _rerank_inputs(rng)
    with pytest.raises(ReidctlError, match="over the limit"):
        re_ranking(q_g, q_q, g_g, max_bytes=1000)
    # MSMT17 (11,659 × 82,161) is far over the default 8 GB
    assert E.rerank_memory_bytes(11_659, 82_161) > E.DEFAULT_RERANK_MAX_BYTES


def test_the_other_ap_convention_comes_from_the_same_ranking():
    rng = np.random.default_rng(4)
    dist = rng.random((7, 12)).round(1)  # rounded: ties, which the conventions treat differently
    q_pids, g_pids = rng.integers(0, 3, 7), rng.integers(0, 3, 12)
    q_cams, g_cams = rng.integers(0, 2, 7), rng.integers(0, 2, 12)
    both = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, ap="sklearn", also=("trapezoid", "matlab"))
    for kind in ("trapezoid", "matlab"):
        alone = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, ap=kind)
        assert both[f"mAP_{kind}"] == pytest.approx(alone["mAP"])
    assert both["mAP"] == pytest.approx(evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)["mAP"])
    assert both["mAP_trapezoid"] != pytest.approx(both["mAP"])
    with pytest.raises(ValueError, match="ap='bogus' is not one of"):
        evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, also=("bogus",))
