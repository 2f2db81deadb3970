"""The extract / evaluate / inspect commands end to end on a tiny fake Market-style folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from reidctl.cli import app
from tests.fakedata import colour_market

runner = CliRunner()
FAST = ["--arch", "resnet18", "--height", "64", "--width", "32", "--workers", "0", "--device", "cpu"]


@pytest.fixture
def tiny(tmp_path):
    """Identities are colours; train 6 ids, test 4 ids plus a distractor, 2 cameras."""
    return colour_market(tmp_path / "tiny", train_ids=6, test_ids=4, per_camera=2)


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for cmd in ("extract", "evaluate", "inspect", "synth", "cluster"):
        assert cmd in result.output


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "reidctl", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "extract" in out.stdout


def test_extract_inspect_evaluate(tiny, tmp_path):
    feats = tmp_path / "test.h5"
    r = invoke("extract", "--data", tiny, "--split", "test", "--out", feats, "--parts", "2", "--json", *FAST)
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["rows"] == 4 + 13 and info["parts"] == 2
    r = invoke("inspect", feats, "--json")
    assert r.exit_code == 0
    desc = json.loads(r.stdout)
    assert desc["schema"] == "reidctl/features" and desc["params"]["model"]["arch"] == "resnet18"
    assert desc["datasets"]["parts"].startswith("17×2×512")
    r = invoke("inspect", feats)
    assert r.exit_code == 0 and "reidctl/features" in r.output
    for ap in ("sklearn", "trapezoid"):
        r = invoke("evaluate", feats, "--ap", ap, "--json")
        assert r.exit_code == 0, r.output
        res = json.loads(r.stdout)
        assert 0 < res["mAP"] <= 1 and res["queries"] == 4 and res["gallery"] == 13
        # identities are plain colours, so even a random network ranks them well
        assert res["rank1"] >= 0.5
    r = invoke("evaluate", feats, "--rerank")
    assert r.exit_code == 0 and "mAP" in r.output


def test_evaluate_model_directly_matches_file(tiny, tmp_path):
    feats = tmp_path / "test.h5"
    assert invoke("extract", "--data", tiny, "--split", "test", "--out", feats, "--seed", "5", *FAST).exit_code == 0
    from_file = json.loads(invoke("evaluate", feats, "--json").stdout)
    direct = invoke("evaluate", "--data", tiny, "--seed", "5", "--json", *FAST)
    assert direct.exit_code == 0, direct.output
    assert json.loads(direct.stdout)["mAP"] == pytest.approx(from_file["mAP"], abs=1e-6)


def test_user_errors_exit_2_without_traceback(tiny, tmp_path):
    train = tmp_path / "train.h5"
    assert invoke("extract", "--data", tiny, "--out", train, *FAST).exit_code == 0
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
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.h5").exists()


def test_corrupt_image_named_or_skipped(tiny, tmp_path):
    bad = tiny / "bounding_box_train" / "0001_c1s1_000000_01.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    r = invoke("extract", "--data", tiny, "--out", tmp_path / "f.h5", *FAST)
    assert r.exit_code == 2 and bad.name in r.output and "--skip-bad-images" in r.output
    assert not (tmp_path / "f.h5").exists()
    r = invoke("extract", "--data", tiny, "--out", tmp_path / "f.h5", "--skip-bad-images", "--json", *FAST)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["skipped_images"] == 1 and res["rows"] == 23


def test_cluster_and_refine_commands(tiny, tmp_path):
    feats, labels, refined = tmp_path / "train.h5", tmp_path / "labels.h5", tmp_path / "refined.h5"
    assert invoke("extract", "--data", tiny, "--out", feats, *FAST).exit_code == 0
    r = invoke("cluster", feats, "--out", labels, "--k1", "4", "--k2", "2", "--eps", "0.5", "--min-samples", "2",
               "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["rows"] == 24 and summary["clusters"] == 6 and summary["quality"]["f_score"] == 1.0
    # each identity: 2 images in each of 2 cameras → 4 of its 6 pairs cross cameras
    assert summary["camera_mix"] == {"cameras": 2, "multi_camera_clusters": 6, "cross_camera_pairs": 4 / 6}
    desc = json.loads(invoke("inspect", labels, "--json").stdout)
    assert desc["schema"] == "reidctl/labels" and "sparse csr 24×24" in desc["datasets"]["jaccard"]
    assert desc["inputs"]["features"] == json.loads(invoke("inspect", feats, "--json").stdout)["digest"]
    r = invoke("cluster", feats, "--out", labels, "--k1", "4", "--k2", "2")  # the table form and the report
    assert r.exit_code == 0 and "label quality" in r.output
    r = invoke("refine", feats, "--method", "cc", "--labels", labels, "--out", refined, "--json")
    assert r.exit_code == 0, r.output
    # without --labels the method's default clustering runs (here with a smaller k1 for 24 images)
    r = invoke("refine", feats, "--method", "cc", "--k1", "4", "--k2", "2", "--eps", "0.5", "--out", refined, "--json")
    assert r.exit_code == 0, r.output
    assert "cc" in invoke("refine", "--help").output
    for args, message in [
        (("cluster", feats, "--out", labels, "--eps", "1.5"), "--eps"),
        (("cluster", feats, "--out", labels, "--algo", "agglomerative"), "--n-clusters"),
        (("cluster", feats, "--out", labels, "--k1", "30"), "too few"),
        (("refine", feats, "--method", "nope", "--out", refined), "unknown --method"),
        (("cluster", labels, "--out", tmp_path / "x.h5"), "expected 'reidctl/features'"),
    ]:
        r = invoke(*args)
        assert r.exit_code == 2 and message in r.output, (args, r.output)
    r = invoke("cluster", feats, "--out", tmp_path / "agg.h5", "--algo", "agglomerative", "--n-clusters", "6",
               "--k1", "4", "--k2", "1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["clusters"] == 6


def test_single_camera_clusters_warn(tmp_path):
    """Features that group by camera, not by person: the commands say so (exit 0, a warning)."""
    from reidctl.artifacts import write_features

    n = 16
    cams = np.repeat([0, 1], n // 2)
    feats = np.zeros((n, 8), np.float32)
    feats[np.arange(n), cams] = 1.0  # one direction per camera
    feats += 0.01 * np.random.default_rng(0).normal(size=feats.shape).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    path = tmp_path / "f.h5"
    write_features(path, feats, camids=cams, paths=[f"{i:02d}.jpg" for i in range(n)], split=["train"] * n,
                   pids=np.tile(np.arange(n // 2), 2))
    r = invoke("cluster", path, "--out", tmp_path / "l.h5", "--k1", "4", "--k2", "2", "--min-samples", "2")
    assert r.exit_code == 0, r.output
    assert "pseudo identities spans two of the 2 cameras" in r.output
    r = invoke("cluster", path, "--out", tmp_path / "l.h5", "--k1", "4", "--k2", "2", "--min-samples", "2", "--json")
    mix = json.loads(r.stdout)["camera_mix"]
    assert mix["multi_camera_clusters"] == 0 and mix["cross_camera_pairs"] == 0.0
    r = invoke("refine", path, "--method", "cc", "--k1", "4", "--k2", "2", "--out", tmp_path / "r.h5")
    assert r.exit_code == 0 and "cannot teach cross-camera matching" in r.output
