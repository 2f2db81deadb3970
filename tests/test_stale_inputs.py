"""Inputs from outside the run folder that change must not leave stale cached stages (issue 27,
reliability defect 4), and ``loop --verify`` re-hashes what the fast path trusts by size and
modification time. Each ``test_4_*`` failed on the code before the fix."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from reidctl.artifacts import INTRA_LABELS, read_labels, write_labels
from reidctl.data.datasets import load_dataset
from reidctl.data.fingerprint import split_fingerprint
from reidctl.data import stats
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.models.spec import ModelSpec
from reidctl.pipeline.loop import run_loop
from reidctl.models.checkpoint import checkpoint_digest, save_checkpoint
from tests.fakedata import colour_market
from tests.clitools import run_ok
from tests.looptools import CLI_ARGS, loop_config, read_log

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ModelConfig("resnet18", height=64, width=32)
#: :func:`_config`'s loop as command-line options.
_at = CLI_ARGS.index("--eval-every")
CLI = [*CLI_ARGS[:_at], *CLI_ARGS[_at + 2:], "--epochs", "1", "--eval-every", "0", "--no-eval-init"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A cache folder of the test's own (stats, fingerprints), and no memory of earlier tests."""
    monkeypatch.setenv("REIDCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stats, "_MEMO", {})


@pytest.fixture()
def market(tmp_path):
    return colour_market(tmp_path / "market", train_ids=6, test_ids=3)


def _config(data, run_dir, **kw):
    return loop_config(data, run_dir, **{"epochs": 1, "eval_every": 0, "eval_init": False, **kw})


def _cached(run_dir, since=0):
    return {(r["epoch"], r["stage"]): r["cached"] for r in read_log(run_dir)[since:] if "cached" in r}


def _notices(run_dir, since=0):
    return [r["notice"] for r in read_log(run_dir)[since:] if "notice" in r]


def _keep_stat(path, edit):
    """Apply ``edit()`` to ``path`` and give it back its size and modification time: the edit
    the size+mtime fast path cannot see."""
    st = os.stat(path)
    edit()
    assert os.stat(path).st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_4_checkpoint_digest_is_computed_not_read(tmp_path):
    path = tmp_path / "m.pt"
    torch.manual_seed(0)
    stored = save_checkpoint(path, ReidModel(CONFIG), epoch=0, method="cc")
    payload = torch.load(path, weights_only=True)
    payload["model"]["backbone.conv1.weight"] *= 1.5  # re-saved with its old "digest" field
    torch.save(payload, path)
    assert payload["digest"] == stored and checkpoint_digest(path) != stored


def test_4_an_edited_start_checkpoint_reruns_every_stage(market, tmp_path):
    start, run_dir = tmp_path / "m.pt", tmp_path / "run"
    torch.manual_seed(0)
    save_checkpoint(start, ReidModel(CONFIG))
    model = ModelSpec(checkpoint=start)
    run_loop(_config(market, run_dir, model=model))
    payload = torch.load(start, weights_only=True)
    payload["model"]["backbone.conv1.weight"] *= -1  # other weights, the old "digest" field
    torch.save(payload, start)
    n = len(read_log(run_dir))
    run_loop(_config(market, run_dir, model=model))
    stages = _cached(run_dir, n)
    assert stages and not any(stages.values()), stages


def _intra_file(path, data):
    """A stage-1 file of the train split: one intra-camera cluster per (camera, identity)."""
    train = load_dataset(str(data)).train
    camids = np.array([s.camid for s in train], np.int64)
    labels = np.array([s.camid * 100 + s.pid for s in train], np.int32)
    write_labels(path, labels, paths=[s.relpath for s in train], extra={"camids": camids},
                 params={"made": "by hand"}, schema=INTRA_LABELS)
    return path


def test_4_edited_intra_labels_rerun_the_stages_that_read_them(market, tmp_path):
    intra, run_dir = _intra_file(tmp_path / "intra.h5", market), tmp_path / "run"
    config = _config(market, run_dir, method="icrefine", options={"k1": 6, "k2": 2, "eps": 0.5, "min_samples": 3,
                                                                  "iters": 2, "batch_size": 8, "num_instances": 4,
                                                                  "bn_chunks": 2, "intra": str(intra)})
    run_loop(config)
    with h5py.File(intra, "r+") as f:  # labels edited in place: the recorded digest attribute stays
        f["labels"][...] = np.asarray(f["labels"])[::-1]
    n = len(read_log(run_dir))
    run_loop(config)
    stages = _cached(run_dir, n)
    assert stages[(0, "extract")] is True and stages[(0, "cluster")] is True
    assert stages[(0, "refine")] is False and stages[(0, "train")] is False


def test_4_an_edited_stats_cache_file_is_not_used(market, tmp_path):
    train = load_dataset(str(market)).train
    norm = stats.dataset_norm(train, 64, 32)
    [cached] = (tmp_path / "cache" / "stats").glob("*.json")
    record = json.loads(cached.read_text())
    cached.write_text(json.dumps({**record, "mean": [0.9, 0.9, 0.9]}))
    stats._MEMO.clear()
    again = stats.dataset_norm(train, 64, 32)
    assert again == norm
    assert json.loads(cached.read_text())["mean"] == list(norm.mean)  # the edited file was replaced


def test_4_a_stats_cache_file_without_its_check_is_recomputed(market, tmp_path):
    """A file in the format before the fix (mean and std only, nothing to check them by)."""
    train = load_dataset(str(market)).train
    norm = stats.dataset_norm(train, 64, 32)
    [cached] = (tmp_path / "cache" / "stats").glob("*.json")
    cached.write_text(json.dumps({"mean": [0.1, 0.2, 0.3], "std": [0.2, 0.2, 0.2]}))
    stats._MEMO.clear()
    assert stats.dataset_norm(train, 64, 32) == norm


def test_4_verify_sees_an_image_edited_behind_size_and_mtime(market, tmp_path):
    run_dir = tmp_path / "run"
    run_loop(_config(market, run_dir))
    image = sorted((market / "bounding_box_train").iterdir())[0]
    raw = bytearray(image.read_bytes())

    def edit():
        raw[len(raw) // 2] ^= 0x10  # one bit in the JPEG's coded data: another picture, same size
        image.write_bytes(bytes(raw))

    _keep_stat(image, edit)
    n = len(read_log(run_dir))
    run_loop(_config(market, run_dir))  # the documented fast path: size and mtime are trusted
    assert all(_cached(run_dir, n).values())
    n = len(read_log(run_dir))
    run_loop(_config(market, run_dir, verify=True))
    stages = _cached(run_dir, n)
    assert stages[(0, "extract")] is False and stages[(0, "train")] is False


def test_4_verify_sees_an_output_edited_behind_size_and_mtime(market, tmp_path):
    run_dir = tmp_path / "run"
    run_loop(_config(market, run_dir))
    labels = run_dir / "epoch_000" / "labels.h5"
    original = read_labels(labels).labels.copy()

    def edit():
        with h5py.File(labels, "r+") as f:
            f["labels"][...] = 0

    _keep_stat(labels, edit)
    n = len(read_log(run_dir))
    run_ok("loop", "--data", market, "--run-dir", run_dir, *CLI, "--verify")  # the same run, from the CLI
    stages = _cached(run_dir, n)
    assert stages[(0, "extract")] is True and stages[(0, "cluster")] is False
    assert any("labels.h5" in m and "changed since the stage wrote it" in m for m in _notices(run_dir, n))
    np.testing.assert_array_equal(read_labels(labels).labels, original)


def test_fingerprint_is_the_images_content(market, tmp_path):
    """Copies of the same images elsewhere (new mtimes) have the same fingerprint; one changed
    byte gives another, with ``verify`` even when size and mtime are restored."""
    train = load_dataset(str(market)).train
    before = split_fingerprint(train)
    copy = tmp_path / "copy"
    shutil.copytree(market, copy, copy_function=shutil.copy)  # new mtimes
    assert split_fingerprint(load_dataset(str(copy)).train) == before
    image = train[0].path
    raw = bytearray(image.read_bytes())
    raw[len(raw) // 2] ^= 0x10

    _keep_stat(image, lambda: image.write_bytes(bytes(raw)))
    assert split_fingerprint(train) == before  # trusted: same size and mtime
    assert split_fingerprint(train, verify=True) != before
    assert split_fingerprint(train) != before  # and the re-hash is remembered
