"""The extract / evaluate / inspect commands end to end on a tiny fake Market-style folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import typer

from reidctl.artifacts import read_labels, write_features, write_labels
from reidctl.cli import app
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market

FAST = ["--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32", "--workers", "0", "--device", "cpu"]


@pytest.fixture
def tiny(tmp_path):
    """Identities are colours; train 6 ids, test 4 ids plus a distractor, 2 cameras."""
    return colour_market(tmp_path / "tiny", train_ids=6, test_ids=4, per_camera=2)


# every command the pipeline needs; a registration dropped from reidctl/cli/__init__.py fails here
COMMANDS = {"synth", "extract", "cluster", "intra-camera", "pretrain", "refine", "train-epoch", "loop", "report", "evaluate", "rank", "export", "inspect"}


def test_help_lists_commands():
    registered = list(typer.main.get_command(app).commands)
    assert set(registered) == COMMANDS and len(registered) == len(COMMANDS)
    out = run_ok("--help").output
    for cmd in registered:  # one row of the Commands panel each
        assert re.search(rf"^│ {re.escape(cmd)} ", out, re.MULTILINE), (cmd, out)


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "reidctl", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "extract" in out.stdout


def test_extract_inspect_evaluate(tiny, tmp_path):
    feats = tmp_path / "test.h5"
    r = run_ok("extract", "--data", tiny, "--split", "test", "--out", feats, "--parts", "2", "--json", *FAST)
    info = json.loads(r.stdout)
    assert info["rows"] == 4 + 13 and info["parts"] == 2
    r = run_ok("inspect", feats, "--json")
    desc = json.loads(r.stdout)
    assert desc["schema"] == "reidctl/features" and desc["params"]["model"]["arch"] == "resnet18"
    assert desc["datasets"]["parts"].startswith("17×2×512")
    r = run_ok("inspect", feats)
    assert "reidctl/features" in r.output
    for ap in ("sklearn", "trapezoid"):
        r = run_ok("evaluate", feats, "--ap", ap, "--json")
        res = json.loads(r.stdout)
        assert 0 < res["mAP"] <= 1 and res["queries"] == 4 and res["gallery"] == 13
        # identities are plain colours, so even a random network ranks them well
        assert res["rank1"] >= 0.5
    r = run_ok("evaluate", feats, "--rerank")
    assert "mAP" in r.output


def test_evaluate_model_directly_matches_file(tiny, tmp_path):
    feats = tmp_path / "test.h5"
    run_ok("extract", "--data", tiny, "--split", "test", "--out", feats, "--seed", "5", *FAST)
    from_file = json.loads(run_ok("evaluate", feats, "--json").stdout)
    direct = run_ok("evaluate", "--data", tiny, "--seed", "5", "--json", *FAST)
    assert json.loads(direct.stdout)["mAP"] == pytest.approx(from_file["mAP"], abs=1e-6)


def test_user_errors_exit_2_without_traceback(tiny, tmp_path):
    train = tmp_path / "train.h5"
    run_ok("extract", "--data", tiny, "--out", train, *FAST)
    cases = [
        (("evaluate", train), "needs query and gallery"),
        (("evaluate",), "nothing to evaluate"),
        (("extract", "--data", tmp_path / "nowhere", "--out", tmp_path / "x.h5", *FAST), "nowhere"),
        (("extract", "--data", tiny, "--split", "val", "--out", tmp_path / "x.h5", *FAST), "unknown split"),
        (("extract", "--data", tiny, "--out", tmp_path / "x.h5", "--device", "cuda:7", "--arch", "resnet18"), "cuda"),
        (("inspect", tmp_path / "missing.h5"), "no such file"),
        (("evaluate", train, "--ap", "interpolated"), "--ap"),
    ]
    for args, message in cases:
        run_error(*args, match=re.escape(message))
    assert not (tmp_path / "x.h5").exists()


def test_corrupt_image_named_or_skipped(tiny, tmp_path):
    bad = tiny / "bounding_box_train" / "0001_c1s1_000000_01.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    r = run_error("extract", "--data", tiny, "--out", tmp_path / "f.h5", *FAST, match=re.escape(bad.name))
    assert "--skip-bad-images" in r.stderr
    assert not (tmp_path / "f.h5").exists()
    r = run_ok("extract", "--data", tiny, "--out", tmp_path / "f.h5", "--skip-bad-images", "--json", *FAST)
    res = json.loads(r.stdout)
    assert res["skipped_images"] == 1 and res["rows"] == 23


def test_cluster_and_refine_commands(tiny, tmp_path):
    feats, labels, refined = tmp_path / "train.h5", tmp_path / "labels.h5", tmp_path / "refined.h5"
    run_ok("extract", "--data", tiny, "--out", feats, *FAST)
    r = run_ok("cluster", feats, "--out", labels, "--k1", "4", "--k2", "2", "--eps", "0.5", "--min-samples", "2",
               "--json")
    summary = json.loads(r.stdout)
    assert summary["rows"] == 24 and summary["clusters"] == 6 and summary["quality"]["f_score"] == 1.0
    # each identity: 2 images in each of 2 cameras → 4 of its 6 pairs cross cameras
    assert summary["camera_mix"] == {"cameras": 2, "multi_camera_clusters": 6, "cross_camera_pairs": 4 / 6}
    desc = json.loads(run_ok("inspect", labels, "--json").stdout)
    assert desc["schema"] == "reidctl/labels" and "sparse csr 24×24" in desc["datasets"]["jaccard"]
    assert desc["inputs"]["features"] == json.loads(run_ok("inspect", feats, "--json").stdout)["digest"]
    r = run_ok("cluster", feats, "--out", labels, "--k1", "4", "--k2", "2")  # the table form and the report
    assert "label quality" in r.output
    run_ok("refine", feats, "--method", "cc", "--labels", labels, "--out", refined, "--json")
    # without --labels the method's default clustering runs (here with a smaller k1 for 24 images)
    run_ok("refine", feats, "--method", "cc", "--k1", "4", "--k2", "2", "--eps", "0.5", "--out", refined, "--json")
    assert "cc" in run_ok("refine", "--help").output
    for args, message in [
        (("cluster", feats, "--out", labels, "--eps", "1.5"), "--eps"),
        (("cluster", feats, "--out", labels, "--algo", "agglomerative"), "--n-clusters"),
        (("cluster", feats, "--out", labels, "--k1", "30"), "too few"),
        (("refine", feats, "--method", "nope", "--out", refined), "unknown --method"),
        (("cluster", labels, "--out", tmp_path / "x.h5"), "expected 'reidctl/features'"),
    ]:
        run_error(*args, match=re.escape(message))
    r = run_ok("cluster", feats, "--out", tmp_path / "agg.h5", "--algo", "agglomerative", "--n-clusters", "6",
               "--k1", "4", "--k2", "1", "--json")
    assert json.loads(r.stdout)["clusters"] == 6


def test_a_cluster_that_swallows_many_people_warns(tmp_path):
    """60 images around one direction beside 20 groups of 4: at a wide eps `cluster` makes one
    cluster of nearly all 60 (over 40 % of the clustered images, 15 times the median of 4) and says
    so (exit 0, a warning)."""
    groups = np.concatenate([np.zeros(60, int), np.repeat(np.arange(1, 21), 4)])
    feats = np.zeros((len(groups), 32), np.float32)
    feats[np.arange(len(groups)), groups] = 1.0
    feats += 0.01 * np.random.default_rng(0).normal(size=feats.shape).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    path = tmp_path / "f.h5"
    write_features(path, feats, camids=np.arange(len(groups)) % 2, paths=[f"{i:03d}.jpg" for i in range(len(groups))],
                   split=["train"] * len(groups))
    r = run_ok("cluster", path, "--out", tmp_path / "l.h5", "--k1", "4", "--k2", "2", "--eps", "0.9", "--json")
    sizes = json.loads(r.stdout)["sizes"]
    assert sizes["largest"] >= 50 and sizes["median"] == 4.0 and sizes["clustered"] >= 130
    share, k = round(100 * sizes["largest"] / sizes["clustered"]), json.loads(r.stdout)["clusters"]
    r = run_ok("cluster", path, "--out", tmp_path / "l.h5", "--k1", "4", "--k2", "2", "--eps", "0.9")
    assert (f"one of the {k} pseudo identities holds {sizes['largest']} of the {sizes['clustered']} clustered images "
            f"({share} %; the median one 4)") in r.stderr


def test_single_camera_clusters_warn(tmp_path):
    """Features that group by camera, not by person: the commands say so (exit 0, a warning)."""
    n = 16
    cams = np.repeat([0, 1], n // 2)
    feats = np.zeros((n, 8), np.float32)
    feats[np.arange(n), cams] = 1.0  # one direction per camera
    feats += 0.01 * np.random.default_rng(0).normal(size=feats.shape).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    path = tmp_path / "f.h5"
    write_features(path, feats, camids=cams, paths=[f"{i:02d}.jpg" for i in range(n)], split=["train"] * n,
                   pids=np.tile(np.arange(n // 2), 2))
    r = run_ok("cluster", path, "--out", tmp_path / "l.h5", "--k1", "4", "--k2", "2", "--min-samples", "2")
    assert "pseudo identities spans two of the 2 cameras" in r.output
    r = run_ok("cluster", path, "--out", tmp_path / "l.h5", "--k1", "4", "--k2", "2", "--min-samples", "2", "--json")
    mix = json.loads(r.stdout)["camera_mix"]
    assert mix["multi_camera_clusters"] == 0 and mix["cross_camera_pairs"] == 0.0
    r = run_ok("refine", path, "--method", "cc", "--k1", "4", "--k2", "2", "--out", tmp_path / "r.h5")
    assert "cannot teach cross-camera matching" in r.output


def test_refine_cc_with_labels_leaves_them_unchanged(tmp_path):
    """cc has no refinement: `refine --method cc --labels L` writes L's labels as they are, outliers,
    gaps in the ids and their order included (no renumbering, no reclustering)."""
    n = 12
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    paths = [f"{i:02d}.jpg" for i in range(n)]
    write_features(tmp_path / "f.h5", feats, camids=np.tile([0, 1], n // 2), paths=paths, split=["train"] * n)
    given = np.array([7, -1, 3, 7, 0, 3, -1, 12, 12, 0, 7, 3], dtype=np.int32)
    write_labels(tmp_path / "l.h5", given, paths=paths)
    run_ok("refine", tmp_path / "f.h5", "--method", "cc", "--labels", tmp_path / "l.h5", "--out", tmp_path / "r.h5")
    before, after = read_labels(tmp_path / "l.h5"), read_labels(tmp_path / "r.h5")
    np.testing.assert_array_equal(before.labels, given)
    assert after.labels.dtype == before.labels.dtype and after.paths == before.paths
    np.testing.assert_array_equal(after.labels, before.labels)
