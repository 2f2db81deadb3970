"""`cluster --algo infomap`: Cluster Contrast's InfoMap variant (ALGORITHMS.md §3.9).

Expected values come from hand computation on tiny kNN tables, or from a dense loop-by-loop
re-implementation of the official procedure written here (the official code needs faiss and a
network, neither of which tests have).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys

import numpy as np
import pytest

from reidctl import search
from reidctl.artifacts import read_labels, write_features
from reidctl.cluster.infomap import (INFOMAP_SEED, drop_small, infomap_cluster, infomap_labels, infomap_links,
                                     link_distances, require_infomap)
from reidctl.cluster.algorithms import get_algorithm
from reidctl.cluster.clustering import ClusterParams, cluster_features
from reidctl.errors import ReidctlError
from reidctl.options import resolve
from reidctl.methods import get_method
from reidctl.methods.plan import cluster_params
from tests.clitools import run_error, run_ok


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _blobs(n: int, ids: int, d: int = 32, noise: float = 0.6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pids = rng.integers(0, ids, n)
    return _unit(rng.standard_normal((ids, d))[pids] + noise * rng.standard_normal((n, d))), pids


def _two_groups(per: int = 20, seed: int = 0) -> np.ndarray:
    """Two tight groups of ``per`` unit vectors around orthogonal directions (cos ≈ 0 between)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((2 * per, 16))
    x[:per, 0] = x[per:, 1] = 1.0
    return _unit(x + 0.05 * rng.standard_normal(x.shape))


# ---------------------------------------------------------------------------------------------
# links, by hand


def test_links_by_hand():
    # squared L2 of unit vectors: 2 − 2·cos; cos 1, 0.75, 0.5, 0.25 → 0, 0.5, 1.0, 1.5
    idx = np.array([[0, 1, 2, 3],   # self first; 0.5 exactly at the cut is linked; 3 beyond
                    [0, 1, 2, 3],   # a duplicate of 1 comes before 1 itself: linked, self skipped
                    [2, 3, 0, 1],   # 3 beyond the cut ends the walk: 0 and 1 are never reached
                    [3, 2, 1, 0]])  # nothing within the cut: a "single" image
    dist = np.array([[0.0, 0.5, 1.0, 1.5],
                     [0.0, 0.0, 0.5, 1.5],
                     [0.0, 1.5, 0.5, 0.5],
                     [0.0, 1.5, 1.6, 2.0]], np.float32)
    links = infomap_links(dist, idx, min_sim=0.5)
    np.testing.assert_array_equal(links.src, [0, 0, 1, 1])
    np.testing.assert_array_equal(links.dst, [1, 2, 0, 2])
    np.testing.assert_allclose(links.weight, [0.75, 0.5, 1.0, 0.75])
    # a stricter cut keeps only what is at least as similar
    strict = infomap_links(dist, idx, min_sim=0.75)
    np.testing.assert_array_equal(strict.src, [0, 1, 1])
    np.testing.assert_array_equal(strict.dst, [1, 0, 2])
    with pytest.raises(ValueError, match="N×k"):
        infomap_links(dist[:, :3], idx, 0.5)


def test_link_distances_hold_the_links_and_a_zero_diagonal():
    idx = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]])
    dist = np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 0.5], [0.0, 1.5, 1.5]], np.float32)
    m = link_distances(3, infomap_links(dist, idx, 0.5))
    # 0→1 at 1 − cos = 0 (a duplicate: an explicit zero), 0→2 and 1→2 at 0.25; row 2 only itself
    assert m.nnz == 4 + 3  # four links, three diagonal zeros
    dense = np.ones((3, 3))
    c = m.tocoo()
    dense[c.row, c.col] = c.data
    np.testing.assert_allclose(dense, [[0, 0, 0.25], [0, 0, 0.25], [1, 1, 0]])


# ---------------------------------------------------------------------------------------------
# small clusters, numbering


def test_drop_small_by_hand():
    modules = np.array([5, 5, 2, -1, 2, 2, 7, 5, -1, 7])  # −1: in no link (a cluster of its own)
    # sizes: module 5 → 3 rows, 2 → 3, 7 → 2, each single → 1; numbered by their first row
    np.testing.assert_array_equal(drop_small(modules, 2), [0, 0, 1, -1, 1, 1, -1, 0, -1, -1])
    np.testing.assert_array_equal(drop_small(modules, 0), [0, 0, 1, 2, 1, 1, 3, 0, 4, 3])
    np.testing.assert_array_equal(drop_small(modules, 1), [0, 0, 1, -1, 1, 1, 2, 0, -1, 2])
    # "at most k2 images" become outliers: size 3 with k2 = 3 goes
    assert (drop_small(modules, 3) == -1).all()
    assert (drop_small(np.full(4, -1), 0) == np.arange(4)).all()
    assert len(drop_small(np.zeros(0, np.int64), 4)) == 0


# ---------------------------------------------------------------------------------------------
# clustering


def test_two_separated_groups_give_two_clusters():
    x = _two_groups()
    labels = infomap_cluster(x)  # the official defaults: k1 15, eps 0.5, k2 4
    np.testing.assert_array_equal(labels, np.repeat([0, 1], 20))
    # no link reaches across (cos ≈ 0 < 0.5), and a group of 20 is far above k2
    dist, idx = search.knn(x, 15, device="cpu")
    links = infomap_links(dist, idx, 0.5)
    assert ((links.src < 20) == (links.dst < 20)).all() and len(links.src) == 40 * 14
    # groups of 4 (= k2) or fewer are outliers
    small = _unit(np.concatenate([x[:20], x[20:24]]))
    np.testing.assert_array_equal(infomap_cluster(small), np.r_[np.zeros(20, int), -np.ones(4, int)])


def test_deterministic():
    x, _ = _blobs(300, 20)
    first = infomap_cluster(x, device="cpu")
    assert first.max() >= 5  # a real partition, not a trivial one
    for _ in range(2):
        np.testing.assert_array_equal(infomap_cluster(x, device="cpu"), first)
    dist, idx = search.knn(x, 20, device="cpu")  # precomputed lists with more columns: the first k1 used
    np.testing.assert_array_equal(infomap_cluster(x, knn=(dist, idx)), first)


def _dense_reference(x: np.ndarray, k1: int, eps: float, k2: int, seed: int) -> np.ndarray:
    """The official procedure, one image at a time on the dense cosine matrix: neighbours by
    (1 − cos, index), links until the first farther one, Infomap, each leaf's module, singles
    alone, clusters of ≤ k2 dropped, numbered by first row."""
    import infomap

    x64 = x.astype(np.float64)
    n = len(x)
    links = []
    for i in range(n):
        d = [(1.0 - float(x64[i] @ x64[j]), j) for j in range(n)]
        for dij, j in sorted(d)[:k1]:
            if j == i:
                continue
            if dij > 1.0 - eps:
                break
            links.append((i, j, 1.0 - dij))
    im = infomap.Infomap(two_level=True, directed=True, silent=True, seed=seed, num_trials=1)
    for i, j, w in links:
        im.add_link(i, j, w)
    result = im.run()
    cluster = {}
    for node in result.nodes():  # leaf nodes only
        cluster[node.node_id] = ("module", node.module_id)
    for i in range(n):
        cluster.setdefault(i, ("single", i))
    members: dict = {}
    for i in range(n):
        members.setdefault(cluster[i], []).append(i)
    labels = [-1] * n
    next_id = 0
    for i in range(n):  # by first row
        group = members[cluster[i]]
        if group[0] == i and len(group) > k2:
            for j in group:
                labels[j] = next_id
            next_id += 1
    return np.array(labels)


@pytest.mark.parametrize(("k1", "eps", "k2"), [(15, 0.5, 4), (10, 0.6, 2), (20, 0.4, 0)])
def test_matches_dense_reference(k1, eps, k2):
    x, _ = _blobs(120, 30, noise=1.0, seed=k1)  # clusters, small ones and images without a link
    ours = infomap_cluster(x, k1, eps, k2, device="cpu")
    np.testing.assert_array_equal(ours, _dense_reference(x, k1, eps, k2, INFOMAP_SEED))
    assert ours.max() >= 7 and ((ours < 0).sum() > 20 if k2 else (ours >= 0).all())


def test_no_links_at_all():
    x = _unit(np.eye(20, dtype=np.float32))  # orthogonal: cos 0 everywhere
    assert (infomap_cluster(x, k1=5) == -1).all()
    np.testing.assert_array_equal(infomap_cluster(x, k1=5, k2=0), np.arange(20))  # each image alone


# ---------------------------------------------------------------------------------------------
# options: per-algorithm defaults, refusals


def test_per_algorithm_defaults():
    assert {k: getattr(ClusterParams(), k) for k in ("k1", "k2", "eps")} == {"k1": 30, "k2": 6, "eps": 0.6}
    p = resolve(ClusterParams, {"algo": "infomap"}, what="`cluster`")
    assert (p.k1, p.k2, p.eps) == (15, 4, 0.5) == tuple(get_algorithm("infomap").defaults()[k] for k in ("k1", "k2", "eps"))
    p = resolve(ClusterParams, {"algo": "infomap", "k1": 30, "eps": 0.6}, what="`cluster`")
    assert (p.k1, p.k2, p.eps) == (30, 4, 0.6)  # given values win
    # unset options are None until the instance is built with its algorithm (no sentinel values)
    assert {f.name: f.default for f in dataclasses.fields(ClusterParams) if f.name in ("k1", "eps")} == \
        {"k1": None, "eps": None}
    # the layered construction of `refine` and `loop`: CC's defaults, the method's, the user's
    p = cluster_params(get_method("cc"), algo="infomap")
    assert (p.algo, p.k1, p.k2, p.eps) == ("infomap", 15, 4, 0.5)
    assert json.loads(json.dumps(dataclasses.asdict(p)))["k1"] == 15
    p = cluster_params(get_method("pplr"), algo="infomap", k2=2)
    assert (p.k1, p.k2, p.eps) == (15, 2, 0.5)
    p = cluster_params(get_method("icrefine"), n_samples=100, algo="infomap")
    assert (p.algo, p.k1, p.n_clusters) == ("infomap", 15, None)


def test_options_infomap_does_not_use_are_refused():
    with pytest.raises(ReidctlError, match="--min-samples does not apply to --algo infomap"):
        resolve(ClusterParams, {"algo": "infomap", "min_samples": 3}, what="`cluster`")
    resolve(ClusterParams, {"algo": "infomap", "min_samples": 4}, what="`cluster`")  # its default: no effect lost
    with pytest.raises(ReidctlError, match="--n-clusters does not apply to --algo infomap"):
        ClusterParams(algo="infomap", n_clusters=10)
    with pytest.raises(ReidctlError, match="global features only"):
        cluster_params(get_method("gl-ncplr"), algo="infomap")
    for given, message in [({"eps": 1.0}, "--eps must lie in"), ({"eps": 0.0}, "--eps must lie in"),
                           ({"k1": 1}, "--k1 must be at least 2")]:
        with pytest.raises(ReidctlError, match=message):
            resolve(ClusterParams, {"algo": "infomap", **given}, what="`cluster`")
    resolve(ClusterParams, {"algo": "infomap", "k2": 0}, what="`cluster`")  # keep every cluster, singles too
    with pytest.raises(ReidctlError, match="choose dbscan, agglomerative or infomap"):
        resolve(ClusterParams, {"algo": "louvain"}, what="`cluster`")


def test_cluster_features_returns_the_graph_as_its_distance():
    x = _two_groups()
    res = cluster_features(x, ClusterParams(algo="infomap", device="cpu"))
    np.testing.assert_array_equal(res["labels"], np.repeat([0, 1], 20))
    assert res["labels"].dtype == np.int32 and res["knn_index"].shape == (40, 15)
    assert res["times"]["jaccard_s"] == 0.0 and set(res["times"]) == {"knn_s", "jaccard_s", "cluster_s"}
    assert res["distance"] == "link_distance" and "jaccard" not in res  # named for what it is
    graph = res["link_distance"]
    assert graph.shape == (40, 40) and graph.nnz == 40 * 14 + 40
    np.testing.assert_array_equal(graph.diagonal(), 0)


# ---------------------------------------------------------------------------------------------
# the command


@pytest.fixture
def feats_file(tmp_path):
    x = _two_groups()
    n = len(x)
    path = tmp_path / "feats.h5"
    write_features(path, x, camids=np.tile([0, 1], n // 2), paths=[f"{i:02d}.jpg" for i in range(n)],
                   split=["train"] * n, pids=np.repeat([3, 8], n // 2))
    return path


def test_cluster_command(feats_file, tmp_path):
    labels = tmp_path / "labels.h5"
    r = run_ok("cluster", feats_file, "--algo", "infomap", "--out", labels, "--device", "cpu", "--json")
    summary = json.loads(r.stdout)
    assert summary["clusters"] == 2 and summary["outliers"] == 0 and summary["quality"]["f_score"] == 1.0
    desc = json.loads(run_ok("inspect", labels, "--json").stdout)
    assert desc["schema"] == "reidctl/labels" and "sparse csr 40×40" in desc["datasets"]["link_distance"]
    params = desc["params"]
    assert (params["algo"], params["k1"], params["k2"], params["eps"]) == ("infomap", 15, 4, 0.5)
    assert params["infomap_seed"] == INFOMAP_SEED
    np.testing.assert_array_equal(read_labels(labels).labels, np.repeat([0, 1], 20))
    assert "label quality" in run_ok("cluster", feats_file, "--algo", "infomap", "--out", labels, "--k2", "2").output
    # downstream: a method refines infomap labels, or clusters with infomap itself
    refined = tmp_path / "refined.h5"
    run_ok("refine", feats_file, "--method", "cc", "--labels", labels, "--out", refined)
    np.testing.assert_array_equal(read_labels(refined).labels, np.repeat([0, 1], 20))
    run_ok("refine", feats_file, "--method", "cc", "--algo", "infomap", "--out", refined)
    np.testing.assert_array_equal(read_labels(refined).labels, np.repeat([0, 1], 20))
    run_ok("refine", feats_file, "--method", "ncplr", "--labels", labels, "--out", refined)
    sets = read_labels(refined).extra["neighbors"]  # NCPLR's sets on the graph's 1 − cos
    coo = sets.tocoo()
    assert sets.shape == (40, 40) and (coo.row == coo.col).sum() == 40 and sets.nnz > 40  # i ∈ Nbr(i)
    assert (np.asarray(coo.row < 20) == np.asarray(coo.col < 20)).all()  # never across the two groups
    for args, message in [(("--min-samples", "3"), "--min-samples does not apply to --algo infomap"),
                          (("--eps", "1.5"), "--eps must lie in (0, 1) with --algo infomap"),
                          (("--k1", "40"), "too few for --k1 40")]:
        run_error("cluster", feats_file, "--algo", "infomap", "--out", tmp_path / "x.h5", *args,
                  match=re.escape(message))
    assert not (tmp_path / "x.h5").exists()


def test_missing_package_is_one_error_line(feats_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "infomap", None)  # `import infomap` now raises ImportError
    with pytest.raises(ReidctlError, match=r"needs the infomap package: pip install 'reidctl\[infomap\]'"):
        require_infomap()
    with pytest.raises(ReidctlError, match="needs the infomap package"):
        infomap_labels(np.zeros((2, 2), np.float32), np.array([[0, 1], [1, 0]]))
    run_error("cluster", feats_file, "--algo", "infomap", "--out", tmp_path / "l.h5",
              match=r"--algo infomap needs the infomap package: pip install 'reidctl\[infomap\]'")
    assert not (tmp_path / "l.h5").exists()
    run_ok("cluster", feats_file, "--out", tmp_path / "l.h5", "--k1", "8", "--k2", "2")  # dbscan needs no infomap
