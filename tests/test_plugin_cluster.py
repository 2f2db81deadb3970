"""A clustering algorithm plugs in with one module and one registry line (issue 28): the
test-only ``components`` (tests/plugin_cluster.py) takes its own defaults, runs through the
cluster stage and the CLI, stores its distance under its own name, which refinements find, and
appears in ``--algo``'s choices and help."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reidctl.artifacts import read_labels, write_features
from reidctl.cluster.algorithms import ALGORITHMS, clustered_distance
from reidctl.cluster.clustering import ClusterParams, cluster_features
from reidctl.errors import ReidctlError
from tests.plugin_cluster import Components
from tests.clitools import run_ok

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(ALGORITHMS, "components", Components())


def _features() -> np.ndarray:
    """Two tight groups of four (near e0 and near e1) and one lone vector (e2): by hand, the
    groups are the two components of links with cosine ≥ 0.9 and the lone one is an outlier."""
    rng = np.random.default_rng(0)
    x = np.zeros((9, 8), np.float32)
    x[:4, 0], x[4:8, 1], x[8, 2] = 1, 1, 1
    x[:8, 3:] += 0.05 * rng.standard_normal((8, 5)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_registered_algorithm_clusters_with_its_own_defaults(registered):
    params = ClusterParams(algo="components", knn_backend="torch", device="cpu")
    assert (params.k1, params.eps, params.min_samples) == (3, 0.9, 2)  # its Params, not DBSCAN's
    res = cluster_features(_features(), params)
    np.testing.assert_array_equal(res["labels"], [0, 0, 0, 0, 1, 1, 1, 1, -1])
    assert res["distance"] == "cosine_links" and "jaccard" not in res
    assert res["cosine_links"].shape == (9, 9) and res["cosine_links"][8].nnz == 1  # the lone one: itself
    with pytest.raises(ReidctlError, match=r"--eps must lie in \(0, 1\) with --algo components"):
        ClusterParams(algo="components", eps=1.5).check()


def test_an_unknown_algorithm_names_the_registered_ones(registered):
    with pytest.raises(ReidctlError, match="--algo louvain: choose dbscan, agglomerative, infomap or components"):
        ClusterParams(algo="louvain").check()


def test_the_cluster_command_runs_it_and_refinements_find_its_distance(registered, tmp_path):
    x = _features()
    feats = tmp_path / "feats.h5"
    write_features(feats, x, camids=np.zeros(9, np.int64), paths=[f"{i}.jpg" for i in range(9)], split=["train"] * 9)
    labels = tmp_path / "labels.h5"
    summary = json.loads(run_ok("cluster", feats, "--algo", "components", "--knn-backend", "torch", "--out", labels,
                                "--device", "cpu", "--json").stdout)
    assert summary["clusters"] == 2 and summary["outliers"] == 1
    lab = read_labels(labels)
    np.testing.assert_array_equal(lab.labels, [0, 0, 0, 0, 1, 1, 1, 1, -1])
    name, matrix = clustered_distance(lab.extra)
    assert name == "cosine_links" and matrix.shape == (9, 9)
    assert lab.meta.params["algo"] == "components" and lab.meta.params["k1"] == 3


def test_it_appears_in_the_help_when_registered_before_the_cli_is_imported():
    code = ("import tests.plugin_cluster as p; p.register()\n"
            "from typer.testing import CliRunner\nfrom reidctl.cli import app\n"
            "r = CliRunner().invoke(app, ['cluster', '--help'], terminal_width=200)\n"
            "assert r.exception is None, r.exception\nprint(r.output)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out.stdout).split())  # the help panels' text, unwrapped
    assert "components (test only: connected components of the kNN links with cosine ≥ eps)" in text
