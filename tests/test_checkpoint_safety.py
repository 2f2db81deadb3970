"""Opening a checkpoint or a weights file never runs code (issue 27, reliability defect 1), and
a checkpoint write that fails (a full disk) ends in one line and leaves no file (defect 8).

A ``.pt`` file is a pickle: ``torch.load(weights_only=False)`` runs whatever callable the file
names. Each command that reads a checkpoint gets one that carries a payload (an object whose
``__reduce__`` creates a marker file) and must refuse it in one line without creating the
marker. Each test failed on the code before the fix.
"""

from __future__ import annotations

import errno
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from reidctl.artifacts import ArtifactError
from reidctl.errors import ReidctlError
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.models.weights import read_weights_file
from reidctl.models.checkpoint import (
    capture_rng, checkpoint_digest, content_digest, load_checkpoint, restore_rng, save_checkpoint,
)
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32", "--workers", "0",
        "--device", "cpu"]
#: Training options that fit the tiny dataset (so a command gets as far as reading its checkpoint).
TRAIN = ["--iters", "1", "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2"]
CONFIG = ModelConfig("resnet18", height=64, width=32)
#: The one line every payload checkpoint is refused with.
REFUSED = r": not a reidctl checkpoint \(it holds objects that cannot be loaded safely: io\.open\)$"


class Payload:
    """Unpickling this creates ``marker``: the code a hostile checkpoint would run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    return colour_market(tmp_path_factory.mktemp("safety") / "market", train_ids=5, test_ids=3)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real reidctl checkpoint of the small model."""
    path = tmp_path_factory.mktemp("good") / "m.pt"
    torch.manual_seed(0)
    save_checkpoint(path, ReidModel(CONFIG), epoch=0, method="cc", rng=capture_rng(np.random.default_rng(1)))
    return path


@pytest.fixture(scope="module")
def feats_and_labels(market, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fl")
    feats, labels = folder / "feats.h5", folder / "labels.h5"
    run_ok("extract", "--data", market, "--out", feats, *FAST)
    run_ok("cluster", feats, "--out", labels, "--k1", "4", "--k2", "2", "--min-samples", "2")
    return feats, labels


@pytest.fixture()
def evil(good, tmp_path):
    """A reidctl checkpoint with a payload in front of its real contents, and the payload's marker."""
    marker = tmp_path / "PWNED"
    payload = torch.load(good, weights_only=False)  # our own file, to copy its contents
    path = tmp_path / "evil.pt"
    torch.save({"hook": Payload(str(marker)), **payload}, path)
    return path, marker


def test_1_load_checkpoint_never_runs_a_payload(evil):
    path, marker = evil
    for read in (load_checkpoint, checkpoint_digest, lambda p: load_checkpoint(p, mmap=True)):
        with pytest.raises(ArtifactError, match=re.escape(str(path)) + REFUSED):
            read(path)
    assert not marker.exists()


def test_1_a_bare_pickle_payload_is_refused_too(tmp_path):
    marker, path = tmp_path / "PWNED", tmp_path / "bare.pt"
    torch.save(Payload(str(marker)), path)
    with pytest.raises(ArtifactError, match=re.escape(str(path)) + REFUSED):
        load_checkpoint(path)
    assert not marker.exists()


def _commands(evil, market, feats, labels, out):
    """Every command line that reads a checkpoint, given the hostile one."""
    return {
        "export": ["export", evil, "--out", out / "m.ts"],
        "inspect": ["inspect", evil],
        "evaluate": ["evaluate", "--checkpoint", evil, "--data", market, "--workers", "0", "--device", "cpu"],
        "extract": ["extract", "--checkpoint", evil, "--data", market, "--out", out / "f.h5", "--workers", "0",
                    "--device", "cpu"],
        "train-epoch": ["train-epoch", "--checkpoint", evil, "--data", market, "--labels", labels, "--out",
                        out / "m2.pt", "--workers", "0", "--device", "cpu", *TRAIN],
        "intra-camera": ["intra-camera", "--checkpoint", evil, "--data", market, "--out", out / "intra.h5",
                         "--workers", "0", "--device", "cpu"],
        "rank": ["rank", market / "query", market / "bounding_box_test", "--checkpoint", evil, "--workers", "0",
                 "--device", "cpu"],
        "loop": ["loop", "--checkpoint", evil, "--data", market, "--run-dir", out / "run", "--workers", "0",
                 "--device", "cpu", "--epochs", "1", *TRAIN, "--k1", "6", "--k2", "2", "--eps", "0.5",
                 "--min-samples", "3"],
        "refine-mar": ["refine", "--method", "mar", feats, "--agents", evil, "--out", out / "r.h5"],
    }


@pytest.mark.parametrize("command", ["export", "inspect", "evaluate", "extract", "train-epoch", "intra-camera",
                                     "rank", "loop", "refine-mar"])
def test_1_every_command_refuses_a_checkpoint_payload_in_one_line(command, evil, market, feats_and_labels, tmp_path):
    path, marker = evil
    out = tmp_path / "out"
    out.mkdir()
    run_error(*_commands(path, market, *feats_and_labels, out)[command], match=re.escape(str(path)) + REFUSED)
    assert not marker.exists()
    assert list(out.iterdir()) == []


def test_1_weights_file_payload_is_refused_in_one_line(market, tmp_path):
    marker, path = tmp_path / "PWNED", tmp_path / "w.pth"
    state = {k: v for k, v in torch.nn.Conv2d(3, 4, 3).state_dict().items()}
    torch.save({"hook": Payload(str(marker)), **state}, path)
    with pytest.raises(ReidctlError, match=re.escape(str(path)) + r": not a readable PyTorch weights file \(it holds "
                       r"objects that cannot be loaded safely: io\.open\)$"):
        read_weights_file(path)
    run_error("extract", "--data", market, "--out", tmp_path / "f.h5", "--arch", "resnet18", "--weights", path,
              "--height", "64", "--width", "32", "--workers", "0", "--device", "cpu",
              match=re.escape(str(path)) + r": not a readable PyTorch weights file \(it holds objects that cannot "
              r"be loaded safely: io\.open\)$")
    assert not marker.exists()


def test_1_what_reidctl_writes_loads_without_any_allowed_global(good, tmp_path):
    """A checkpoint with every kind of training state reidctl keeps (numpy's global RNG state, a
    numpy generator's) loads with plain ``weights_only=True``: no global beyond torch's own."""
    path = tmp_path / "full.pt"
    np.random.seed(3)
    random.seed(3)
    save_checkpoint(path, ReidModel(CONFIG), epoch=2, method="cc", rng=capture_rng(np.random.default_rng(7)),
                    history=[{"epoch": 2, "loss": 1.5}], provenance={"init": "random", "norm": {"mean": [0.5] * 3}})
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    payload = torch.load(path, weights_only=True)
    before = (np.random.random(), random.random(), np.random.default_rng(7).random())
    np.random.seed(99)
    random.seed(99)
    generator = restore_rng(payload["rng"])
    assert (np.random.random(), random.random(), generator.random()) == before


def test_1_a_checkpoint_of_the_previous_format_still_loads(tmp_path):
    """Checkpoints written before the fix kept numpy's global RNG state as a tuple holding an
    ndarray (written here as the previous ``save_checkpoint`` wrote it); they load, the array
    allowed as plain data, resume the same RNG and keep their digest."""
    np.random.seed(5)
    legacy = np.random.get_state()
    expected = np.random.random(3)
    model = ReidModel(CONFIG)
    payload = {"schema": "reidctl/checkpoint", "schema_version": 1, "reidctl_version": "0.1.0",
               "model_config": model.config.to_dict(), "model": model.state_dict(), "epoch": 0, "method": "cc",
               "rng": {"python": random.getstate(), "numpy": legacy, "torch": torch.get_rng_state(),
                       "generator": np.random.default_rng(1).bit_generator.state}}
    payload["digest"] = content_digest(payload)
    path = tmp_path / "old.pt"
    torch.save(payload, path)
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    loaded = load_checkpoint(path)
    np.random.seed(0)
    restore_rng(loaded["rng"])
    assert np.array_equal(np.random.random(3), expected)
    assert checkpoint_digest(path) == payload["digest"]


def test_1_an_object_array_in_a_checkpoint_is_refused(tmp_path):
    """The numpy types allowed for old checkpoints rebuild plain numeric arrays, never object
    arrays (whose items would be arbitrary Python objects); nor does reidctl write one."""
    path = tmp_path / "obj.pt"
    with pytest.raises(TypeError, match="checkpoint.extra: a object array is not plain data"):
        save_checkpoint(path, ReidModel(CONFIG), extra=np.array([{"a": 1}, None], dtype=object))
    torch.save({"schema": "reidctl/checkpoint", "schema_version": 1,
                "extra": np.array([{"a": 1}, None], dtype=object)}, path)
    with pytest.raises(ArtifactError, match=re.escape(str(path)) + r": not a reidctl checkpoint \(it holds "
                       r"objects that cannot be loaded safely: numpy\.dtypes\.ObjectDType\)$"):
        load_checkpoint(path)


def test_8_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    """torch.save on a full disk raises ``RuntimeError: [enforce fail at inline_container.cc:672]
    . unexpected pos 704 vs 598`` (measured on /dev/full): no "write" in it, so it escaped."""

    def full(obj, f, *a, **kw):
        with open(f, "wb") as handle:
            handle.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "m.pt"
    with pytest.raises(ArtifactError, match=re.escape(f"cannot write {out}: ") + r".*unexpected pos 704 vs 598"):
        save_checkpoint(out, ReidModel(CONFIG))
    assert list(tmp_path.iterdir()) == []


def test_8_full_disk_on_a_real_small_filesystem(tmp_path):
    """The same on a real 1 MiB tmpfs, where the system lets us mount one (skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")
    try:
        out = mount / "m.pt"
        with pytest.raises(ArtifactError, match=re.escape(f"cannot write {out}: ") + "no space left on the device"):
            save_checkpoint(out, ReidModel(CONFIG))
        assert os.listdir(mount) == []
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)  # still busy: detach it now


def test_8_a_failed_checkpoint_write_in_a_command_is_one_error_line(market, feats_and_labels, tmp_path, monkeypatch):
    def full(obj, f, *a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "m.pt"
    run_error("train-epoch", "--data", market, "--labels", feats_and_labels[1], "--out", out, "--iters", "1",
              "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2", *FAST,
              match=re.escape(f"cannot write {out}: No space left on device"))
    assert not out.exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".m.pt")] == []


def test_1_payload_never_runs_in_a_fresh_interpreter(evil, tmp_path):
    """The same through the installed entry point, in its own process (no test-runner state)."""
    path, marker = evil
    done = subprocess.run([sys.executable, "-m", "reidctl", "inspect", str(path)], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(REFUSED, errors[0]), done.stderr
    assert not marker.exists()
