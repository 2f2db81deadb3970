"""Reliability as a hostile user sees it (issue 11): a stage cache that never serves a stale or
foreign result, bad input that ends in one clear line, options that do what they say.

Each test names the issue item it covers; each failed on the code before the fix.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
import torchvision

from reidctl.artifacts import (
    ArtifactError, atomic_path, read_features, read_labels, write_features, write_labels,
)
from reidctl.errors import ReidctlError
from reidctl.methods.plan import refine_options
from reidctl.methods import get_method
from reidctl.models.spec import ModelSpec
from reidctl.pipeline.loop import STAGES, run_loop
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market
from tests.looptools import CLI_ARGS, loop_config, read_log

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32", "--workers", "0", "--device", "cpu"]
@pytest.fixture(scope="module")
def market(tmp_path_factory):
    return colour_market(tmp_path_factory.mktemp("rel") / "market", train_ids=6, test_ids=3)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A fixed backbone (so the first features do not depend on --seed, as with ImageNet weights)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def _config(data, run_dir, **kw):
    """One epoch without evaluation unless ``kw`` says otherwise."""
    return loop_config(data, run_dir, **{"epochs": 1, "eval_every": 0, **kw})


_log = read_log


def _notices(run_dir, since=0):
    return [r["notice"] for r in _log(run_dir)[since:] if "notice" in r]


def _cached(run_dir, since=0):
    """{(epoch, stage): cached} of the log lines after the first ``since``."""
    return {(r["epoch"], r["stage"]): r["cached"] for r in _log(run_dir)[since:] if "cached" in r}


# ============================================================================================
# 1-6: the cache never serves a stale or foreign result


def test_1_seed_is_in_every_key(market, weights, tmp_path):
    run_dir = tmp_path / "run"
    model = ModelSpec(arch="resnet18", height=64, width=32, weights=weights)
    run_loop(_config(market, run_dir, model=model, seed=1))
    n = len(_log(run_dir))
    run_loop(_config(market, run_dir, model=model, seed=2))
    stages = _cached(run_dir, n)
    # the same weights give the same first features, but clustering seed, refinement and the
    # training generator depend on the seed: none of them may come from seed 1's run
    assert stages[(0, "cluster")] is False and stages[(0, "refine")] is False and stages[(0, "train")] is False


def test_1_precision_is_in_the_extract_and_train_keys(market, tmp_path, monkeypatch):
    import reidctl.pipeline.loop as pipeline

    run_dir = tmp_path / "run"
    run_loop(_config(market, run_dir))
    n = len(_log(run_dir))
    # what --amp bf16 resolves to on a CUDA device (on this CPU every --amp is float32)
    monkeypatch.setattr(pipeline, "precision_name", lambda amp, device: "bfloat16", raising=False)
    run_loop(_config(market, run_dir, amp="bf16"))
    stages = _cached(run_dir, n)
    assert stages[(0, "extract")] is False and stages[(0, "train")] is False  # both follow --amp
    n = len(_log(run_dir))
    run_loop(_config(market, run_dir, amp="bf16"))
    assert all(_cached(run_dir, n).values())


@pytest.mark.slow
def test_2_added_and_removed_images_rerun_every_stage(tmp_path):
    data = colour_market(tmp_path / "market", train_ids=6, test_ids=3)
    run_dir = tmp_path / "run"
    features = run_dir / "epoch_000" / "train.h5"
    run_loop(_config(data, run_dir))
    assert len(read_features(features)) == 36
    train = data / "bounding_box_train"
    shutil.copy(train / "0001_c1s1_000000_01.jpg", train / "0001_c1s1_000009_01.jpg")  # one more image
    n = len(_log(run_dir))
    again = run_loop(_config(data, run_dir))
    assert not any(_cached(run_dir, n).values())
    assert len(read_features(features)) == 37 and again["epochs"][0]["train"]["rows"] == 37
    (train / "0002_c2s1_000001_01.jpg").unlink()  # and one fewer
    n = len(_log(run_dir))
    run_loop(_config(data, run_dir))
    assert _cached(run_dir, n)[(0, "extract")] is False and len(read_features(features)) == 36


def test_3_hand_edited_output_is_noticed_and_rerun(market, tmp_path):
    run_dir = tmp_path / "run"
    run_loop(_config(market, run_dir))
    labels_file = run_dir / "epoch_000" / "labels.h5"
    original = read_labels(labels_file).labels.copy()
    with h5py.File(labels_file, "r+") as f:  # a hand edit that keeps the recorded digest attribute
        f["labels"][...] = 0
    n = len(_log(run_dir))
    run_loop(_config(market, run_dir))
    np.testing.assert_array_equal(read_labels(labels_file).labels, original)
    stages = _cached(run_dir, n)
    assert stages[(0, "extract")] is True and stages[(0, "cluster")] is False
    assert any("labels.h5" in m and "changed since the stage wrote it" in m for m in _notices(run_dir, n))


def test_3_missing_output_is_rerun(market, tmp_path):
    run_dir = tmp_path / "run"
    run_loop(_config(market, run_dir))
    (run_dir / "epoch_000" / "refined.h5").unlink()
    n = len(_log(run_dir))
    run_loop(_config(market, run_dir))
    assert _cached(run_dir, n)[(0, "refine")] is False and any("missing" in m for m in _notices(run_dir, n))


@pytest.mark.slow
def test_4_copied_and_moved_run_dirs_use_their_own_artifacts(market, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = run_loop(_config(market, "runs/a", epochs=2, eval_every=1))  # a relative --run-dir
    shutil.copytree(tmp_path / "runs/a", tmp_path / "copy", copy_function=shutil.copy)  # new mtimes
    shutil.move(tmp_path / "runs/a", tmp_path / "moved")
    for folder in ("copy", "moved"):
        monkeypatch.chdir(tmp_path / "runs")  # another working directory
        run_dir = tmp_path / folder
        n = len(_log(run_dir))
        again = run_loop(_config(market, run_dir, epochs=2, eval_every=1))
        assert all(_cached(run_dir, n).values())
        assert [e.get("eval") for e in again["epochs"]] == [e.get("eval") for e in first["epochs"]]
    records = [json.loads(p.read_text()) for p in (tmp_path / "copy").rglob("*.done.json")]
    assert records and all(not os.path.isabs(r["output"]) and "runs" not in r["output"] for r in records)


@pytest.mark.slow
def test_4_retraining_to_the_same_weights_keeps_later_stages_cached(market, tmp_path):
    run_dir = tmp_path / "run"
    run_loop(_config(market, run_dir, epochs=2))
    n = len(_log(run_dir))
    run_loop(_config(market, run_dir, epochs=2, force_from="train"))
    stages = _cached(run_dir, n)
    assert stages[(0, "train")] is False  # re-trained (deterministic: the same weights, new timings)
    assert stages[(1, "extract")] is True and stages[(1, "cluster")] is True


def test_5_a_locked_run_dir_is_refused(market, tmp_path):
    from reidctl.pipeline.rundir import RunDir

    run_dir = tmp_path / "run"
    with RunDir(run_dir, stages=STAGES):
        with pytest.raises(ReidctlError, match="is in use by another reidctl process .pid"):
            run_loop(_config(market, run_dir))
    run_loop(_config(market, run_dir))  # released


def test_5_lock_is_released_when_its_holder_is_killed(tmp_path):
    from reidctl.pipeline.rundir import RunDir

    run_dir = tmp_path / "run"
    code = ("import sys, time; from reidctl.pipeline.rundir import RunDir; "
            f"r = RunDir({str(run_dir)!r}, stages=('a',)).__enter__(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ReidctlError, match=f"pid {proc.pid}"):
            RunDir(run_dir, stages=("a",)).__enter__()
    finally:
        proc.kill()
        proc.wait()
    with RunDir(run_dir, stages=("a",)):
        pass


def test_6_outputs_that_would_destroy_data_are_refused(market, tmp_path):
    feats, labels = tmp_path / "feats.h5", tmp_path / "labels.h5"
    run_ok("extract", "--data", market, "--out", feats, *FAST)
    before = read_features(feats).feats.copy()
    cluster = ["--k1", "4", "--k2", "2", "--min-samples", "2"]
    run_error("cluster", feats, "--out", feats, *cluster, match="is also an input")
    link_to_feats = tmp_path / "alias.h5"
    link_to_feats.symlink_to(feats)
    run_error("cluster", feats, "--out", link_to_feats, *cluster, match="is also an input")
    np.testing.assert_array_equal(read_features(feats).feats, before)
    other = tmp_path / "other.h5"
    shutil.copy(feats, other)
    run_error("cluster", feats, "--out", other, *cluster, match="is a 'reidctl/features' artifact.*--force")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not ours")
    run_error("cluster", feats, "--out", photo, *cluster, match="is not a reidctl artifact")
    assert photo.read_bytes() == b"not ours"
    run_ok("cluster", feats, "--out", other, *cluster, "--force")
    assert h5py.File(other)["labels"].shape == (36,)
    # --out through a link writes the link's target; the link stays a link
    run_ok("cluster", feats, "--out", labels, *cluster)
    link = tmp_path / "link.h5"
    link.symlink_to(labels)
    run_ok("cluster", feats, "--out", link, *cluster, "--k1", "5")
    assert link.is_symlink() and json.loads(h5py.File(labels).attrs["params"])["k1"] == 5
    run_error("refine", feats, "--labels", labels, "--out", labels, match="is also an input")
    run_error("extract", "--data", market, "--out", labels, *FAST, match="'reidctl/labels' artifact")
    run_error("train-epoch", "--data", market, "--labels", labels, "--out", feats, *FAST,
              match="'reidctl/features' artifact")


LOOP_CLI = [*CLI_ARGS, "--epochs", "2", "--json", "--quiet"]  # stderr: nothing but what a kill makes it say


def _interrupted_run(cmd, run_dir, sig, env):
    """Start ``cmd`` on ``run_dir``; once epoch 0 has trained, try a second loop on the same folder
    (refused: locked), then send ``sig``. Returns the process's exit code and stderr."""
    # SIGINT as a terminal delivers it: a suite started in the background (`cmd &`) passes on an
    # ignored SIGINT, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen([*cmd, "--run-dir", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    log = run_dir / "log.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and any(r.get("stage") == "train" and "progress" not in r  # the stage finished
                                for r in map(json.loads, log.read_text().splitlines())):
            break
        time.sleep(0.05)
    # frozen while a second loop on the same folder, in this process, is refused: the run cannot
    # finish meanwhile, however slow the machine
    proc.send_signal(signal.SIGSTOP)
    run_error(*cmd[3:], "--run-dir", run_dir, match=f"is in use by another reidctl process .pid {proc.pid}")
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)  # a stopped process handles SIGINT once it runs again
    _, stderr = proc.communicate(timeout=60)
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be stopped"
    return proc.returncode, stderr


@pytest.mark.slow
def test_kill_9_and_ctrl_c_then_resume_end_with_the_same_metrics(market, tmp_path):
    cmd = [sys.executable, "-m", "reidctl", "loop", "--data", str(market), *LOOP_CLI]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run([*cmd, "--run-dir", str(tmp_path / "straight")], capture_output=True, text=True, env=env)
    assert ref.returncode == 0, ref.stderr
    want = [(e["epoch"], e.get("eval", {}).get("mAP"), e.get("train", {}).get("loss"))
            for e in json.loads(ref.stdout)["epochs"]]
    for name, sig in (("killed", signal.SIGKILL), ("interrupted", signal.SIGINT)):
        run_dir = tmp_path / name
        code, stderr = _interrupted_run(cmd, run_dir, sig, env)
        if sig == signal.SIGINT:  # Ctrl-C: one line, exit 130, no traceback
            assert code == 130 and stderr.strip().splitlines() == ["interrupted"], stderr  # nothing else
        else:
            assert code == -signal.SIGKILL
        resumed = subprocess.run([*cmd, "--run-dir", str(run_dir)], capture_output=True, text=True, env=env)
        assert resumed.returncode == 0, resumed.stderr  # the lock went with the process
        got = [(e["epoch"], e.get("eval", {}).get("mAP"), e.get("train", {}).get("loss"))
               for e in json.loads(resumed.stdout)["epochs"]]
        assert got == want, name
        assert not list(run_dir.rglob(".*.tmp")), "stale temporary files were left behind"


# ============================================================================================
# 7-13: bad input ends in one clear line


def _features_file(path, feats, n=16):
    write_features(path, feats, camids=np.repeat([0, 1], n // 2), paths=[f"{i:02d}.jpg" for i in range(n)],
                   split=["train"] * n)


def test_7_non_finite_features_are_refused_with_file_and_row(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[5, 3] = np.nan
    x[9, 0] = np.inf
    path = tmp_path / "nan.h5"
    _features_file(path, x)
    run_error("cluster", path, "--out", tmp_path / "l.h5", "--k1", "4", "--k2", "2",
              match=r"nan\.h5: 2 rows hold NaN or Inf features, the first is row 5 \('05\.jpg'\)")
    with pytest.raises(ArtifactError, match="row 5"):
        read_features(path)
    assert not (tmp_path / "l.h5").exists()


def test_8_a_test_split_without_valid_queries_is_an_error(tmp_path):
    data = colour_market(tmp_path / "onecam", train_ids=6, test_ids=3, cams=1, per_camera=4)
    feats = tmp_path / "test.h5"
    run_ok("extract", "--data", data, "--split", "test", "--out", feats, *FAST)
    run_error("evaluate", feats, match="none of its 3 queries can be evaluated .* come from one camera")
    run_error("loop", "--data", data, "--run-dir", tmp_path / "run", "--epochs", "1", *FAST,
              match="no query image has a correct match .* use --eval-every 0")
    assert not (tmp_path / "run").exists()


def test_9_a_dangling_symlink_image_is_a_bad_image(tmp_path):
    data = colour_market(tmp_path / "m", train_ids=6, test_ids=2)
    dangling = data / "bounding_box_train" / "0003_c1s1_000007_01.jpg"
    dangling.symlink_to(tmp_path / "gone.jpg")
    run_error("extract", "--data", data, "--out", tmp_path / "f.h5", *FAST,
              match="0003_c1s1_000007_01.jpg: a dangling symbolic link .*--skip-bad-images")
    r = run_ok("extract", "--data", data, "--out", tmp_path / "f.h5", "--skip-bad-images", "--json", *FAST)
    assert json.loads(r.stdout)["skipped_images"] == 1 and json.loads(r.stdout)["rows"] == 36


def test_10_impossible_outputs_get_one_line_and_leave_nothing(market, tmp_path, monkeypatch):
    feats = tmp_path / "feats.h5"
    run_ok("extract", "--data", market, "--out", feats, *FAST)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cluster = ["--k1", "4", "--k2", "2"]
    run_error("cluster", feats, "--out", tmp_path, *cluster, match="it is a folder, not a file")
    run_error("cluster", feats, "--out", a_file / "l.h5", *cluster, match="a_file is a file, not a folder")
    run_error("loop", "--data", market, "--run-dir", a_file, *FAST, match="is a file, not a folder")
    run_error("loop", "--data", market, "--run-dir", a_file / "run", *FAST,
              match="cannot create it .*a_file is a file, not a folder")
    monkeypatch.setenv("REIDCTL_CACHE", str(a_file))
    run_error("extract", "--data", "synthetic:tiny", "--out", tmp_path / "s.h5", *FAST,
              match="cannot build synthetic:tiny in the cache folder .*set REIDCTL_CACHE")
    run_error("synth", a_file / "ds", match="cannot write the dataset to .*a_file is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "feats.h5"]


@pytest.mark.parametrize(("code", "reason"), [(errno.EACCES, "Permission denied"),
                                              (errno.ENOSPC, "No space left on device"),
                                              (errno.EROFS, "Read-only file system")])
def test_10_refused_or_full_disk_writes_get_one_line_and_leave_nothing(market, tmp_path, monkeypatch, code,
                                                                       reason):
    feats = tmp_path / "feats.h5"
    run_ok("extract", "--data", market, "--out", feats, *FAST)
    real_file = h5py.File

    def failing_file(name, mode="r", *a, **kw):  # the disk refuses once the file is being written
        f = real_file(name, mode, *a, **kw)
        if mode == "w":
            f.close()
            raise OSError(code, os.strerror(code), str(name))
        return f

    monkeypatch.setattr(h5py, "File", failing_file)
    out = tmp_path / "sub" / "labels.h5"
    run_error("cluster", feats, "--out", out, "--k1", "4", "--k2", "2", match=f"cannot write {out}: {reason}")
    assert not out.exists() and not list((tmp_path / "sub").iterdir())  # no partial or temporary file


def test_10_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch):
    from reidctl.models.reid import ModelConfig, ReidModel
    from reidctl.models.checkpoint import save_checkpoint

    def full(obj, f, *a, **kw):  # what torch.save raises when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "m.pt"
    with pytest.raises(ArtifactError, match=f"cannot write {out}: .*file write failed"):
        save_checkpoint(out, ReidModel(ModelConfig("resnet18", height=64, width=32)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root ignores file permissions; the monkeypatched EACCES case above covers it")
def test_10_read_only_folder(market, tmp_path):
    feats = tmp_path / "feats.h5"
    run_ok("extract", "--data", market, "--out", feats, *FAST)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        run_error("cluster", feats, "--out", ro / "l.h5", "--k1", "4", match="Permission denied")
        run_error("loop", "--data", market, "--run-dir", ro / "run", *FAST, match="Permission denied")
    finally:
        ro.chmod(0o700)


def test_11_a_corrupt_compressed_chunk_names_the_file(tmp_path):
    import scipy.sparse as sp

    path = tmp_path / "labels.h5"
    dense = np.arange(1, 40_001, dtype=np.float32).reshape(200, 200)
    write_labels(path, np.zeros(200, np.int32), paths=[f"{i:03d}.jpg" for i in range(200)],
                 extra={"jaccard": sp.csr_matrix(dense)})  # sparse data is stored gzip-compressed
    with h5py.File(path, "r") as f:
        info = f["jaccard/data"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + 8: info.byte_offset + 40] = b"\xff" * 32
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=r"labels\.h5: corrupt artifact, reading it failed"):
        read_labels(path)
    run_ok("inspect", path)  # inspect reads only shapes and attributes: it still works


def test_12_features_of_another_model_are_refused_up_front(market, tmp_path):
    own, feats, labels = tmp_path / "own.h5", tmp_path / "feats.h5", tmp_path / "labels.h5"
    run_ok("extract", "--data", market, "--out", own, *FAST)  # labels made with the model being trained
    run_ok("cluster", own, "--out", labels, "--k1", "4", "--k2", "2", "--min-samples", "2")
    run_ok("extract", "--data", market, "--out", feats, "--arch", "mobilenet_v2", "--pretrained", "none", "--height", "64", "--width",
           "32", "--workers", "0", "--device", "cpu")  # but 1280-d centroid features of another model
    run_error("train-epoch", "--data", market, "--labels", labels, "--features", feats, "--out", tmp_path / "m.pt",
              "--iters", "1", "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2", *FAST,
              match=r"feats\.h5: holds 1280-d features with 0 parts, but the model being trained \(resnet18")
    assert not (tmp_path / "m.pt").exists()


def test_13_a_corrupt_stage_record_is_treated_as_absent(market, tmp_path):
    run_dir = tmp_path / "run"
    run_loop(_config(market, run_dir))
    (run_dir / "epoch_000" / "cluster.done.json").write_text('{"key": "abc", "digest"')
    n = len(_log(run_dir))
    notices = []
    run_loop(_config(market, run_dir), notice=notices.append)
    assert _cached(run_dir, n)[(0, "cluster")] is False
    assert any("cluster.done.json: unreadable stage record" in m for m in notices)
    assert notices == _notices(run_dir, n)  # told, and logged
    json.loads((run_dir / "epoch_000" / "cluster.done.json").read_text())  # rewritten whole


# ============================================================================================
# the other bad inputs of the issue


def test_skipped_bad_images_are_usable_by_train_epoch_and_loop(tmp_path):
    data = colour_market(tmp_path / "m", train_ids=6, test_ids=3)
    bad = data / "bounding_box_train" / "0002_c1s1_000001_01.jpg"
    bad.write_bytes(bad.read_bytes()[:50])
    feats, labels = tmp_path / "f.h5", tmp_path / "l.h5"
    run_ok("extract", "--data", data, "--out", feats, "--skip-bad-images", *FAST)
    run_ok("cluster", feats, "--out", labels, "--k1", "4", "--k2", "2", "--min-samples", "2")
    small = ["--iters", "1", "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2"]
    r = run_ok("train-epoch", "--data", data, "--labels", labels, "--features", feats, "--out", tmp_path / "m.pt",
               *small, *FAST, "--json")
    res = json.loads(r.stdout)
    assert res["rows"] == 35 and res["train_images_not_in_labels"] == 1
    r = run_ok("loop", "--data", data, "--run-dir", tmp_path / "run", "--epochs", "1", "--skip-bad-images",
               "--k1", "6", "--k2", "2", "--eps", "0.5", "--min-samples", "3", *small, "--eval-every", "1", *FAST,
               "--json")
    assert json.loads(r.stdout)["epochs"][1]["train"]["rows"] == 35
    run_error("loop", "--data", data, "--run-dir", tmp_path / "run2", "--epochs", "1", *small, *FAST,
              match="0002_c1s1_000001_01.jpg.*--skip-bad-images")


def test_labels_with_a_row_outside_the_split_are_refused(market, tmp_path):
    labels = tmp_path / "l.h5"
    write_labels(labels, np.zeros(2, np.int32), paths=["bounding_box_train/0001_c1s1_000000_01.jpg", "zzz.jpg"])
    run_error("train-epoch", "--data", market, "--labels", labels, "--out", tmp_path / "m.pt", *FAST,
              match="row 1 is 'zzz.jpg', which is not an image of the train split")


def test_batch_size_must_be_a_multiple_of_num_instances(market, tmp_path):
    run_error("loop", "--data", market, "--run-dir", tmp_path / "r", "--batch-size", "10", "--num-instances", "4",
              *FAST, match="--batch-size 10 is not a multiple of --num-instances 4")
    assert not (tmp_path / "r").exists()


def test_negative_camera_in_a_manifest_is_an_error(market, tmp_path):
    csv = tmp_path / "list.csv"
    img = market / "bounding_box_train" / "0001_c1s1_000000_01.jpg"
    csv.write_text(f"path,pid,camid\n{img},1,-2\n")
    run_error("extract", "--data", csv, "--out", tmp_path / "f.h5", *FAST,
              match=r"list\.csv:2: camid -2 is negative")


def test_zero_batch_size_is_one_error_line(market, tmp_path):
    common = ["--data", market, *FAST]
    run_error("extract", *common, "--out", tmp_path / "x.h5", "--batch-size", "0",
              match=r"--batch-size must be at least 1 \(got 0\)")
    run_error("extract", *common, "--out", tmp_path / "x.h5", "--workers", "-1", match="--workers must be 0")
    run_error("loop", *common, "--run-dir", tmp_path / "r", "--extract-batch-size", "0",
              match="--extract-batch-size must be at least 1")
    run_error("train-epoch", *common, "--labels", tmp_path / "l.h5", "--out", tmp_path / "m.pt",
              "--extract-batch-size", "0", match="--extract-batch-size must be at least 1")
    run_error("evaluate", "--data", market, "--batch-size", "0", *FAST,
              match="--batch-size must be at least 1")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writer_leaves_no_temporary_file_behind(market, tmp_path):
    out = tmp_path / "f.h5"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".f.h5.{int(dead.stdout)}.0123abcd.tmp"  # what `kill -9` during a write leaves
    stale.write_bytes(b"half a file")
    run_ok("extract", "--data", market, "--out", out, *FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]


def test_artifacts_get_the_users_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


# ============================================================================================
# 14-15: options that do what they say


def test_14_evaluate_refuses_options_it_would_ignore(market, tmp_path):
    feats = tmp_path / "test.h5"
    run_ok("extract", "--data", market, "--split", "test", "--out", feats, *FAST)
    run_error("evaluate", feats, "--arch", "resnet50", "--device", "cpu",
              match="--arch, --device: these choose the model that `evaluate --data` extracts")
    run_error("evaluate", feats, "--checkpoint", tmp_path / "m.pt", match="--checkpoint: these choose")
    # no model option: a fresh model starts from ImageNet, as everywhere (offline here: one error line)
    unstarted = [a for a in FAST if a not in ("--pretrained", "none")]
    run_error("evaluate", "--data", market, *unstarted,
              match=r"could not fetch torchvision's ImageNet weights for resnet18 .*--weights FILE.*--pretrained none")
    r = run_ok("evaluate", "--data", market, "--json", *FAST)
    assert json.loads(r.stdout)["queries"] == 3 and json.loads(r.stdout)["init"] == "random"


def test_14_train_epoch_refuses_model_options_that_differ_from_the_checkpoint(market, tmp_path):
    feats, labels, ckpt = tmp_path / "f.h5", tmp_path / "l.h5", tmp_path / "m.pt"
    small = ["--iters", "1", "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2"]
    run_ok("extract", "--data", market, "--out", feats, *FAST)
    run_ok("cluster", feats, "--out", labels, "--k1", "4", "--k2", "2", "--min-samples", "2")
    run_ok("train-epoch", "--data", market, "--labels", labels, "--out", ckpt, *small, *FAST)
    common = ["--data", market, "--labels", labels, "--out", tmp_path / "n.pt", "--checkpoint", ckpt,
              "--workers", "0", "--device", "cpu"]
    run_error("train-epoch", *common, "--arch", "resnet50", "--height", "128",
              match=r"--arch resnet50 \(the checkpoint has resnet18\), --height 128 \(the checkpoint has 64\)")
    run_error("train-epoch", *common, "--weights", tmp_path / "w.pth", match="--weights and --pretrained")
    run_error("extract", "--data", market, "--out", tmp_path / "g.h5", "--checkpoint", ckpt, "--parts", "2",
              match=r"--parts 2 \(the checkpoint has 0\)")
    run_ok("train-epoch", *common, "--arch", "resnet18", "--height", "64")  # the checkpoint's own values


def test_14_intra_clusters_with_an_intra_file_is_a_conflict(tmp_path):
    intra = tmp_path / "intra.h5"
    intra.write_bytes(b"")
    with pytest.raises(ReidctlError, match="--intra-clusters sets how `refine` clusters each camera itself"):
        refine_options(get_method("icrefine"), {"intra": intra, "intra_clusters": "images/4"})


def test_14_icrefine_lowers_k1_for_small_cameras_and_says_so():
    from reidctl.methods.icrefine.intra import cluster_per_camera

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cams = np.repeat([0, 1], [40, 20])  # camera 1 has 20 images, fewer than the official k1 = 30
    labels, reports = cluster_per_camera(x, cams)
    small = reports[1]
    assert small.skipped is None and small.k1 == 19 and small.clusters == 4
    assert (labels[cams == 1] >= 0).all() and reports[0].k1 is None  # 40 images: the official k1


def _option_names():
    """Every --flag of every command."""
    import typer.main

    from reidctl.cli import app

    names = set()
    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            names.update(o for o in param.opts if o.startswith("--"))
    return names


def _raised_messages():
    """String pieces of every ``raise ...Error(...)`` in the package, from its source."""
    import ast
    from pathlib import Path

    import reidctl

    pieces = []
    for path in Path(reidctl.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                for sub in ast.walk(node.exc):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        pieces.append((f"{path.name}:{node.lineno}", sub.value))
    return pieces


def test_15_every_flag_named_in_an_error_message_exists():
    import re

    real = _option_names()
    named = [(where, flag) for where, text in _raised_messages() for flag in re.findall(r"--[a-z][a-z0-9-]*", text)]
    assert len(named) > 50  # the scan sees the messages
    assert [(w, f) for w, f in named if f not in real] == []


def test_15_flags_named_by_params_checks_exist():
    """The checks of every method's options name their flags from field names at run time."""
    import dataclasses
    import re

    from reidctl.methods import METHODS
    from reidctl.methods.icrefine.stage1 import IntraCameraParams

    real = _option_names()
    seen = 0
    for cls in [m.Params for m in METHODS.values()] + [IntraCameraParams]:
        for f in dataclasses.fields(cls):
            for bad in (-1, 0, 10**9 + 1, "bogus"):
                try:
                    cls(**{f.name: bad}).check()
                except ReidctlError as exc:
                    for flag in re.findall(r"--[a-z][a-z0-9-]*", str(exc)):
                        seen += 1
                        assert flag in real, (cls.__name__, f.name, str(exc))
                except (TypeError, ValueError):
                    pass
    assert seen > 10
