"""icrefine: information nodes, discarding (with its order-dependence), decay schedules,
per-camera clustering, and the intra-camera / refine / loop commands end to end."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest

from reidctl.artifacts import INTRA_LABELS, read_labels, write_features
from reidctl.errors import ReidctlError
from reidctl.methods.icrefine import (
    Links, cluster_per_camera, discard, discard_probability, infomap_clusters, score_links,
    select_information_nodes,
)
from tests.clitools import run_error, run_ok

FAST = ["--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32", "--workers", "0", "--device", "cpu"]
TINY_TRAIN = ["--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2", "--k1", "5", "--k2", "2"]


# ---------------------------------------------------------------------------------------------
# information nodes


def test_score_links_walks_ascending_neighbours_and_stops_at_the_cut():
    idx = np.array([[0, 1, 2], [0, 1, 3], [2, 0, 1], [3, 1, 2]])
    # row 1: itself is not first; row 2: 0.6 > 0.5 stops the walk, so 0.3 after it is not taken
    dist = np.array([[0.0, 0.1, 0.6], [0.1, 0.0, 0.3], [0.0, 0.6, 0.3], [0.0, 0.3, 0.5]])
    links = score_links(dist, idx, min_sim=0.5)
    m = dist.mean()
    assert links.mean_distance == pytest.approx(m)
    assert list(zip(links.src.tolist(), links.dst.tolist())) == [(0, 1), (1, 0), (1, 3), (3, 1), (3, 2)]
    np.testing.assert_allclose(links.weight, [0.9, 0.9, 0.7, 0.7, 0.5])
    expected = [1 / (0.1 + m), 1 / (0.1 + m) + 1 / (0.3 + m), 0.0, 1 / (0.3 + m) + 1 / (0.5 + m)]
    np.testing.assert_allclose(links.score, expected)


def test_per_cluster_keeps_the_last_qualifying_member_in_cluster_order():
    score = np.array([6.0, 1.0, 5.0, 0.0, 4.5, 3.9, 9.0, 0.0])  # mean 3.675
    clusters = np.array([1, 1, 1, 0, 0, 0, -1, -1])
    # cluster 0 comes first (rows 3..5): rows 4 and 5 qualify and the last one, 5, wins although
    # it scores less; then cluster 1: rows 0 and 2 qualify, 2 wins (5 < 6)
    assert select_information_nodes(score, clusters, "per-cluster").tolist() == [5, 2]
    # `all`: every row above the mean, in index order, Infomap clusters or not
    assert select_information_nodes(score, clusters, "all").tolist() == [0, 2, 4, 5, 6]
    assert select_information_nodes(np.ones(4), np.zeros(4, int), "per-cluster").tolist() == []  # none > mean
    with pytest.raises(ReidctlError, match="--info-nodes"):
        select_information_nodes(score, clusters, "some")


def test_infomap_clusters_drop_small_modules():
    src, dst = [], []
    for group in (range(0, 6), range(6, 12), range(12, 14)):  # two cliques of 6, one pair
        for a in group:
            for b in group:
                if a != b:
                    src.append(a)
                    dst.append(b)
    links = Links(np.array(src), np.array(dst), np.full(len(src), 0.9), np.zeros(15), 0.1)
    labels = infomap_clusters(15, links, min_size=4)
    assert labels[14] == -1 and (labels[12:14] == -1).all()  # no links; a module of 2 ≤ 4
    assert len(set(labels[:6].tolist())) == 1 and len(set(labels[6:12].tolist())) == 1
    assert {labels[0], labels[6]} == {0, 1}


# ---------------------------------------------------------------------------------------------
# discarding


def test_discard_same_camera_members_outside_the_intra_cluster():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    cams = np.array([0, 0, 0, 1, 1, 0, 0, 1])
    intra = np.array([0, 0, 1, 2, 3, 1, 4, 5])
    res = discard(labels, cams, intra, np.array([0]), 1.0, np.random.default_rng(0))
    assert res.labels.tolist() == [0, 0, -1, 0, 0, -1, 1, 1]  # rows 3, 4: another camera, kept
    assert res.discarded_by.tolist() == [-1, -1, 0, -1, -1, 0, -1, -1]
    # a node without an intra-camera cluster prunes nothing and is counted
    res = discard(labels, cams, np.where(np.arange(8) == 0, -1, intra), np.array([0]), 1.0, np.random.default_rng(0))
    assert res.labels.tolist() == labels.tolist() and res.nodes_without_intra == 1
    # p = 0 keeps everything
    assert discard(labels, cams, intra, np.array([0]), 0.0, np.random.default_rng(0)).mask.sum() == 0


def test_discard_is_order_dependent_like_the_code():
    labels = np.zeros(4, int)
    cams = np.zeros(4, int)
    intra = np.array([0, 1, 0, 1])
    # node 0 discards rows 1 and 3; node 1 is then discarded itself and prunes nothing
    first = discard(labels, cams, intra, np.array([0, 1]), 1.0, np.random.default_rng(0))
    assert first.labels.tolist() == [0, -1, 0, -1] and first.discarded_by.tolist() == [-1, 0, -1, 0]
    second = discard(labels, cams, intra, np.array([1, 0]), 1.0, np.random.default_rng(0))
    assert second.labels.tolist() == [-1, 0, -1, 0]


def _reference_discard(labels, cams, intra, nodes, p, rng):
    """The code's loop, one candidate at a time (the vectorised version must match it draw for draw)."""
    y = labels.copy()
    members = {g: [j for j in range(len(labels)) if labels[j] == g] for g in set(labels.tolist()) if g >= 0}
    for n in nodes:
        if cams[n] < 0 or intra[n] < 0 or y[n] < 0:
            continue
        cand = [j for j in members[y[n]] if cams[j] == cams[n] and intra[j] != intra[n] and y[j] != -1]
        draws = rng.random(len(cand))
        for j, u in zip(cand, draws):
            if u < p:
                y[j] = -1
    return y


def test_discard_with_p_below_one_matches_the_sequential_reference():
    gen = np.random.default_rng(3)
    n = 200
    labels = gen.integers(0, 8, n)
    cams = gen.integers(0, 3, n)
    intra = cams * 10 + gen.integers(0, 4, n)
    nodes = gen.choice(n, 30, replace=False)
    got = discard(labels, cams, intra, nodes, 0.6, np.random.default_rng(7))
    want = _reference_discard(labels, cams, intra, nodes, 0.6, np.random.default_rng(7))
    assert got.labels.tolist() == want.tolist()
    assert 0 < got.mask.sum() < n


# ---------------------------------------------------------------------------------------------
# decay


@pytest.mark.parametrize("decay, at_end", [("none", 1.0), ("linear", 0.75), ("exponential", 0.75), ("cosine", 0.75)])
def test_decay_end_points(decay, at_end):
    assert discard_probability(decay, 0, 50) == pytest.approx(1.0)
    assert discard_probability(decay, 50, 50) == pytest.approx(at_end)
    assert at_end <= discard_probability(decay, 25, 50) <= 1.0


def test_decay_formulas_and_errors():
    assert discard_probability("cosine", 10, 20) == pytest.approx(0.5 * (1 + np.cos(np.pi * 10 / 60)))
    assert discard_probability("linear", 10, 20) == pytest.approx(1 - 10 / 80)
    assert discard_probability("exponential", 10, 20) == pytest.approx(0.75**0.5)
    for args, message in [(("step", 0, 5), r"^--decay step: choose one of none, "),
                          (("cosine", 6, 5), r"^--epoch 6 must lie between 0 and --epochs 5$"),
                          (("cosine", -1, 5), r"^--epoch -1 must lie between 0 and --epochs 5$"),
                          (("none", 0, 0), r"^--epochs must be at least 1$")]:
        with pytest.raises(ReidctlError, match=message):
            discard_probability(*args)


# ---------------------------------------------------------------------------------------------
# per-camera clustering


def _camera_features(cams=(0, 1, 2), ids=8, per=5, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    feats, camids = [], []
    for c in cams:
        for pid in range(ids):
            for _ in range(per):
                x = centres[pid] + rng.normal(size=dim) * 0.3
                feats.append(x / np.linalg.norm(x))
                camids.append(c)
    return np.array(feats, np.float32), np.array(camids)


def test_per_camera_clustering_with_zero_and_one_based_cameras():
    feats, cams = _camera_features()  # 3 cameras × 8 identities × 5 images
    zero, rep0 = cluster_per_camera(feats, cams, k1=5, k2=2)
    one, rep1 = cluster_per_camera(feats, cams + 1, k1=5, k2=2)
    assert zero.tolist() == one.tolist()
    assert [r.camera for r in rep0] == [0, 1, 2] and [r.camera for r in rep1] == [1, 2, 3]
    assert all(r.clusters == 8 and r.skipped is None for r in rep1)  # 40 images / 5
    assert len(set(zero.tolist())) == 3 * 8  # numbered uniquely across cameras
    for c in (0, 1, 2):
        assert len(set(zero[cams == c].tolist()) & set(zero[cams != c].tolist())) == 0
    # identities are tight clusters, as many as the clusters: each cluster is one identity
    pids = np.tile(np.repeat(np.arange(8), 5), 3)
    assert all(len(set(pids[zero == k].tolist())) == 1 for k in set(zero.tolist()))


def test_per_camera_clustering_skips_small_and_unknown_cameras():
    feats, cams = _camera_features(cams=(1, 2))
    cams = cams.copy()
    cams[:4] = -1  # unknown camera
    cams[4:8] = 7  # a camera of 4 images: too few for k1 = 5
    labels, reports = cluster_per_camera(feats, cams, k1=5, k2=2)
    assert (labels[:8] == -1).all() and (labels[8:] >= 0).all()
    small = next(r for r in reports if r.camera == 7)
    assert small.skipped and "too few" in small.skipped
    with pytest.raises(ReidctlError, match="no camera ids"):
        cluster_per_camera(feats, np.full(len(feats), -1), k1=5, k2=2)


# ---------------------------------------------------------------------------------------------
# commands


@pytest.fixture(scope="module")
def feats_file(tmp_path_factory):
    """108 rows, 12 identities × 3 cameras × 3 images (1-based cameras), clustered features."""
    path = tmp_path_factory.mktemp("icrefine") / "feats.h5"
    rng = np.random.default_rng(0)
    centres, offsets = rng.normal(size=(12, 32)), rng.normal(size=(3, 32)) * 0.6
    rows = []
    for pid in range(12):
        for c in range(3):
            for k in range(3):
                x = centres[pid] + offsets[c] + rng.normal(size=32) * 0.5
                rows.append((f"bounding_box_train/{pid + 1:04d}_c{c + 1}s1_{k:06d}_01.jpg", x / np.linalg.norm(x),
                             c + 1, pid + 1))
    rows.sort()
    write_features(path, np.array([r[1] for r in rows]), camids=np.array([r[2] for r in rows]),
                   paths=[r[0] for r in rows], split=["train"] * len(rows), pids=np.array([r[3] for r in rows]))
    return path


def test_cli_refine_icrefine_cosine(feats_file, tmp_path):
    out = tmp_path / "r.h5"
    r = run_ok("refine", "--method", "icrefine", "--decay", "cosine", feats_file, "--out", out)
    assert "per-camera clustering" in r.output and "information nodes" in r.output
    lab = read_labels(out)
    g, mask = lab.extra["global_labels"], lab.extra["discard_mask"]
    assert len(set(g.tolist())) == 108 // 5  # 1200 capped at N/5 for this small file
    assert lab.labels.tolist() == np.where(mask, -1, g).tolist()
    assert len(lab.extra["info_nodes"]) > 0 and lab.extra["discarded_by"][mask].min() >= 0
    with h5py.File(out) as f:
        assert "per-camera clustering" in f.attrs["intra_source"] and f.attrs["seed"] == 1
        options = json.loads(f.attrs["params"])["options"]
    assert options["decay"] == "cosine" and options["p"] == 1.0 and options["seed"] == 1
    # the last epoch of a cosine schedule: p = 0.75; `all` info nodes; a set number of clusters
    r = run_ok("refine", "--method", "icrefine", "--decay", "cosine", "--epoch", "10", "--epochs", "10",
               "--info-nodes", "all", "--n-clusters", "12", feats_file, "--out", out, "--json")
    summary = json.loads(r.stdout)
    assert summary["p"] == pytest.approx(0.75) and summary["info_node_mode"] == "all"
    assert summary["global_clusters"] == 12
    run_ok("refine", "--method", "icrefine", "--global-clustering", "dbscan", "--k1", "10", feats_file,
           "--out", out, "--json")
    run_ok("refine", "--method", "icrefine", "--decay", "cosine", feats_file)  # as DESIGN.md writes it
    default_out = feats_file.with_name(f"{feats_file.stem}.icrefine.h5")
    assert len(read_labels(default_out).labels) == 108
    for args, message in [
        (("--method", "cc", "--decay", "cosine"), "--decay does not apply to --method cc"),
        (("--method", "icrefine", "--decay", "step"), "--decay step"),
        (("--method", "icrefine", "--n-clusters", "500"), "exceeds the number of samples"),
        (("--method", "icrefine", "--info-nodes", "some"), "--info-nodes some"),
        (("--method", "icrefine", "--intra", feats_file), "expected 'reidctl/intra-camera-labels'"),
        (("--method", "icrefine", "--intra", tmp_path / "none.h5"), "no such file"),
    ]:
        run_error("refine", feats_file, "--out", tmp_path / "x.h5", *args, match=re.escape(message))
    assert not (tmp_path / "x.h5").exists()


def test_cli_intra_camera_then_refine_with_it(tmp_path):
    intra = tmp_path / "intra.h5"
    r = run_ok("intra-camera", "--data", "synthetic:tiny", "--out", intra, "--epochs", "2", "--iters", "1",
               *TINY_TRAIN, *FAST, "--json")
    summary = json.loads(r.stdout)
    cams = summary["per_camera"]
    assert [c["camera"] for c in cams] == [0, 1, 2] and summary["unclustered_rows"] == 0
    assert all(c["clusters"] == c["images"] // 5 and c["trained_epochs"] == 1 for c in cams)
    lab = read_labels(intra, schema=INTRA_LABELS)
    assert len(set(lab.labels.tolist())) == summary["clusters"]
    assert lab.extra["silhouette_history"].shape == (3, 2)
    # the refine stage takes it (rows and cameras must line up with the features)
    feats, out = tmp_path / "train.h5", tmp_path / "r.h5"
    run_ok("extract", "--data", "synthetic:tiny", "--out", feats, *FAST)
    r = run_ok("refine", "--method", "icrefine", feats, "--intra", intra, "--k1", "5", "--k2", "2", "--out", out,
               "--json")
    assert json.loads(r.stdout)["intra"] == f"stage 1: {intra}"
    run_error("intra-camera", "--data", "synthetic:tiny", "--out", intra, "--clusters", "100", *FAST,
              match="no camera has enough images")


@pytest.mark.slow
def test_cli_loop_icrefine(tmp_path):
    run_dir = tmp_path / "run"
    args = ["loop", "--method", "icrefine", "--data", "synthetic:tiny", "--run-dir", run_dir, "--epochs", "1",
            "--iters", "2", "--intra-epochs", "2", "--intra-iters", "1", "--decay", "cosine", "--eval-every", "1",
            "--deterministic", *TINY_TRAIN, *FAST, "--json"]
    r = run_ok(*args)
    result = json.loads(r.stdout)
    assert result["intra"]["clustered_cameras"] == 3 and result["last"]["epoch"] == 0
    assert (run_dir / "intra" / "intra.h5").exists()
    refined = read_labels(run_dir / "epoch_000" / "refined.h5")
    with h5py.File(run_dir / "epoch_000" / "refined.h5") as f:
        options = json.loads(f.attrs["params"])["options"]
    intra_digest = read_labels(run_dir / "intra" / "intra.h5", schema=INTRA_LABELS).meta.digest
    assert options["epoch"] == 0 and options["epochs"] == 1 and options["intra_digest"] == intra_digest
    assert "intra" not in options  # the file by its content: the digest does not depend on where it lies
    assert "discard_mask" in refined.extra
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    n = len(log)
    run_ok(*args)  # a re-run is cached, stage 1 included
    assert all(rec["cached"] for rec in [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()][n:])
    for extra, message in [(("--method", "cc", "--decay", "cosine"), "--decay does not apply"),
                           (("--method", "cc", "--intra-epochs", "2"), "does not apply to --method cc (an option of icrefine)")]:
        run_error("loop", "--data", "synthetic:tiny", "--run-dir", tmp_path / "x", *extra, *FAST,
                  match=re.escape(message))
