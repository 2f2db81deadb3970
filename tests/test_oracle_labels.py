"""examples/oracle_labels.py: a train split's true identities as a labels file that
`train-epoch` trains on (the diagnostic of docs/uda.md), and its refusal of unlabelled data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from reidctl.artifacts import read_labels
from reidctl.data.datasets import load_dataset
from tests.clitools import run_ok
from tests.fakedata import colour_market

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "oracle_labels.py"


def _script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_the_true_identities_in_split_order_train_an_epoch(tmp_path):
    market = colour_market(tmp_path / "m", train_ids=4, test_ids=2, per_camera=2)
    out = tmp_path / "oracle.h5"
    proc = _script(market, out)
    assert proc.returncode == 0, proc.stderr
    train = load_dataset(market).train
    labels = read_labels(out)
    assert labels.paths == [s.relpath for s in train]
    pids = np.array([s.pid for s in train])
    assert len(set(pids)) == 4 and labels.labels.max() == 3
    for a in range(len(pids)):  # same identity ⇔ same label, numbered in ascending order of the pids
        assert ((labels.labels == labels.labels[a]) == (pids == pids[a])).all()
    assert labels.labels[np.argmin(pids)] == 0 and labels.labels[np.argmax(pids)] == 3
    r = run_ok("train-epoch", "--data", market, "--labels", out, "--out", tmp_path / "e0.pt", "--arch", "resnet18",
               "--pretrained", "none", "--height", "64", "--width", "32", "--workers", "0", "--device", "cpu",
               "--iters", "1", "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2", "--json")
    assert json.loads(r.stdout)["clusters"] == 4


def test_per_camera_splits_each_identity_by_camera(tmp_path):
    market = colour_market(tmp_path / "m", train_ids=3, test_ids=2, per_camera=2)
    out = tmp_path / "split.h5"
    assert _script(market, out, "--per-camera").returncode == 0
    train = load_dataset(market).train
    keys = np.array([(s.pid, s.camid) for s in train])
    labels = read_labels(out).labels
    assert len(set(map(tuple, keys))) == labels.max() + 1 == 2 * 3  # two cameras per identity
    for a in range(len(keys)):  # same label ⇔ same identity and same camera
        assert ((labels == labels[a]) == (keys == keys[a]).all(1)).all()


def test_unlabelled_images_are_refused(tmp_path):
    folder = tmp_path / "imgs"
    market = colour_market(tmp_path / "m", train_ids=2, test_ids=2, per_camera=1)
    folder.mkdir()
    for i, p in enumerate(sorted((market / "bounding_box_train").glob("*.jpg"))):
        (folder / f"img{i}.jpg").write_bytes(p.read_bytes())
    proc = _script(folder, tmp_path / "o.h5")
    assert proc.returncode == 1 and "the train split has images without identities" in proc.stderr
    assert not (tmp_path / "o.h5").exists()
