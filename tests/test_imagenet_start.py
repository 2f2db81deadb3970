"""A fresh model starts from ImageNet unless told otherwise, on every command (issue 26).

Nothing is downloaded here: ``conftest`` makes torchvision's download fail as it does offline,
and the tests that need the ImageNet start patch ``reidctl.models.weights.fetch_imagenet``.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torchvision

from reidctl.pipeline.configfile import read_config
from reidctl.methods import METHODS
from tests.clitools import run_error, run_ok

SMALL = ["--arch", "resnet18", "--height", "64", "--width", "32", "--k1", "6", "--k2", "2", "--eps", "0.5",
         "--min-samples", "3", "--iters", "1", "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2",
         "--eval-every", "0", "--workers", "0", "--device", "cpu", "--epochs", "1"]
OFFLINE = r"^error: could not fetch torchvision's ImageNet weights for {arch} \(OSError: network disabled in the " \
          r"tests\); a fresh model starts from them by default: give a local copy with --weights FILE, or start " \
          r"from random weights on purpose with --pretrained none$"


@pytest.fixture
def imagenet(monkeypatch):
    """torchvision's ImageNet weights as if downloaded: a seeded resnet18's, and who asked for them."""
    torch.manual_seed(123)
    state = torchvision.models.resnet18().state_dict()
    asked: list[str] = []

    def fetch(arch):
        asked.append(arch)
        return state

    monkeypatch.setattr("reidctl.models.weights.fetch_imagenet", fetch)
    return state, asked


@pytest.mark.parametrize("method", list(METHODS))
def test_offline_without_weights_a_loop_stops_before_its_run_folder(method, tmp_path):
    extra = ["--aux-data", "synthetic:tiny-source"] if method == "mar" else []
    run_error("loop", "--method", method, "--data", "synthetic:tiny", "--run-dir", tmp_path / "run", "--device", "cpu",
              *extra, match=OFFLINE.format(arch="resnet50"))
    assert not (tmp_path / "run").exists()


def test_every_command_that_builds_a_fresh_model_starts_from_imagenet_by_default(tmp_path):
    offline = OFFLINE.format(arch="resnet18")
    fresh = ["--arch", "resnet18", "--height", "64", "--width", "32", "--device", "cpu"]
    run_error("extract", "--data", "synthetic:tiny", "--out", tmp_path / "f.h5", *fresh, match=offline)
    run_error("evaluate", "--data", "synthetic:tiny", *fresh, match=offline)
    run_error("pretrain", "--data", "synthetic:tiny", "--out", tmp_path / "s.pt", *fresh, match=offline)
    run_error("intra-camera", "--data", "synthetic:tiny", "--out", tmp_path / "i.h5", *fresh, match=offline)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_loop_starts_from_imagenet_and_records_it(imagenet, tmp_path):
    state, asked = imagenet
    run_ok("loop", "--method", "cc", "--data", "synthetic:tiny", "--run-dir", tmp_path / "run", *SMALL)
    assert asked and set(asked) == {"resnet18"}
    assert read_config(tmp_path / "run" / "config.toml")["pretrained"] == "imagenet"
    with h5py.File(tmp_path / "run" / "epoch_000" / "train.h5") as f:
        assert '"init": "imagenet"' in f.attrs["params"]
        loop_feats = np.asarray(f["global"])
    # the same features as a model started from that state dict as a weights file
    torch.save(state, tmp_path / "r18.pth")
    run_ok("extract", "--data", "synthetic:tiny", "--out", tmp_path / "w.h5", "--weights", tmp_path / "r18.pth",
           "--arch", "resnet18", "--height", "64", "--width", "32", "--device", "cpu", "--workers", "0")
    with h5py.File(tmp_path / "w.h5") as f:
        np.testing.assert_allclose(loop_feats, np.asarray(f["global"]), rtol=0, atol=1e-6)


def test_a_random_start_happens_only_when_asked_for(imagenet, tmp_path):
    _, asked = imagenet
    run_ok("loop", "--method", "cc", "--data", "synthetic:tiny", "--run-dir", tmp_path / "run", *SMALL,
           "--pretrained", "none")
    assert asked == []
    assert read_config(tmp_path / "run" / "config.toml")["pretrained"] == "none"
    with h5py.File(tmp_path / "run" / "epoch_000" / "train.h5") as f:
        assert '"init": "random"' in f.attrs["params"]


def test_weights_file_alone_is_the_start_and_explicit_conflicts_are_refused(imagenet, tmp_path):
    state, asked = imagenet
    torch.save(state, tmp_path / "r18.pth")
    fresh = ["--data", "synthetic:tiny", "--arch", "resnet18", "--height", "64", "--width", "32", "--device", "cpu"]
    run_ok("extract", *fresh, "--out", tmp_path / "w.h5", "--weights", tmp_path / "r18.pth")
    assert asked == []
    for pretrained in ("imagenet", "none"):
        run_error("extract", *fresh, "--out", tmp_path / "x.h5", "--weights", tmp_path / "r18.pth", "--pretrained",
                  pretrained, match=rf"--weights FILE and --pretrained {pretrained} both choose the start")
    run_error("extract", *fresh, "--out", tmp_path / "x.h5", "--checkpoint", tmp_path / "m.pt", "--pretrained",
              "none", match=r"--weights and --pretrained choose the start of a fresh model; with --checkpoint")
