"""Features mean what they say (issue 27, reliability defects 6 and 7): features of different
models are never ranked together, whatever their files are called, and no command writes NaN
features with exit 0. Each ``test_6_*`` / ``test_7_*`` failed on the code before the fix."""

from __future__ import annotations

import json
import re
import shutil

import h5py
import pytest
import torch
import torchvision
from PIL import Image

from reidctl.data.stats import IMAGENET, Norm, check_norm
from reidctl.errors import DatasetError
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.models.weights import model_digest
from reidctl.models.checkpoint import save_checkpoint
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--arch", "resnet18", "--height", "64", "--width", "32", "--workers", "0", "--device", "cpu"]
RANDOM = [*SMALL, "--pretrained", "none"]


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    return colour_market(tmp_path_factory.mktemp("integrity") / "market", train_ids=4, test_ids=3)


def _weights(path, seed, change=None):
    torch.manual_seed(seed)
    state = torchvision.models.resnet18().state_dict()
    if change is not None:
        change(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _extract(market, out, *args):
    run_ok("extract", "--data", market, "--split", "test", "--out", out, *args)
    return out


# ============================================================================================
# 6: the model's identity is its weights' content


def test_6_model_digest_is_the_weights_content():
    config = ModelConfig("resnet18", height=64, width=32)
    torch.manual_seed(1)
    a = ReidModel(config)
    torch.manual_seed(2)
    b = ReidModel(config)
    torch.manual_seed(1)
    again = ReidModel(config)
    assert model_digest(a) == model_digest(again) != model_digest(b)
    other_size = ReidModel(ModelConfig("resnet18", height=128, width=64))
    other_size.load_state_dict(a.state_dict())  # the same weights, another input size: other features
    assert model_digest(other_size) != model_digest(a)


def test_6_features_of_two_random_inits_are_not_ranked_together(market, tmp_path):
    q = _extract(market, tmp_path / "q.h5", *RANDOM, "--seed", "1")
    g = _extract(market, tmp_path / "g.h5", *RANDOM, "--seed", "2")
    run_error("rank", q, g, match=rf"{re.escape(str(q))} and {re.escape(str(g))} come from different models "
              r"\(weights [0-9a-f]{12} vs weights [0-9a-f]{12}\); extract both with the same model$")
    same = _extract(market, tmp_path / "same.h5", *RANDOM, "--seed", "1")
    run_ok("rank", q, same, "--top-k", "2")  # the same seed builds the same weights


def test_6_weights_files_of_the_same_name_are_different_models(market, tmp_path):
    a = _weights(tmp_path / "a" / "w.pth", 1)
    b = _weights(tmp_path / "b" / "w.pth", 2)
    q = _extract(market, tmp_path / "q.h5", *SMALL, "--weights", a)
    g = _extract(market, tmp_path / "g.h5", *SMALL, "--weights", b)
    run_error("rank", q, g, match="come from different models")
    copy = tmp_path / "c" / "other-name.pth"
    copy.parent.mkdir()
    shutil.copy(a, copy)
    same = _extract(market, tmp_path / "same.h5", *SMALL, "--weights", copy)
    run_ok("rank", q, same, "--top-k", "2")  # other file name, the same weights


def test_6_images_ranked_against_features_of_another_checkpoint_are_refused(market, tmp_path):
    config = ModelConfig("resnet18", height=64, width=32)
    ckpts = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        ckpts.append(tmp_path / f"m{seed}.pt")
        save_checkpoint(ckpts[-1], ReidModel(config))
    g = _extract(market, tmp_path / "g.h5", "--checkpoint", ckpts[0], "--workers", "0", "--device", "cpu")
    query = market / "query"
    run_ok("rank", query, g, "--checkpoint", ckpts[0], "--top-k", "2", "--workers", "0", "--device", "cpu")
    run_error("rank", query, g, "--checkpoint", ckpts[1], "--workers", "0", "--device", "cpu",
              match="come from different models")


def test_6_files_without_a_weights_digest_are_compared_as_before(market, tmp_path):
    """Features written before the fix record no weights digest: they are compared by what they
    record (the checkpoint's digest, or the architecture and start), and still rank together."""
    q = _extract(market, tmp_path / "q.h5", *RANDOM)
    g = tmp_path / "g.h5"
    shutil.copy(q, g)
    for path in (q, g):
        with h5py.File(path, "r+") as f:
            params = json.loads(f.attrs["params"])
            del params["weights_digest"]
            f.attrs["params"] = json.dumps(params)
    run_ok("rank", q, g, "--top-k", "2")


# ============================================================================================
# 7: no NaN features


def _negative_var(state):
    state["bn1.running_var"] = -state["bn1.running_var"].abs() - 1


def test_7_corrupt_batchnorm_statistics_are_refused_before_extraction(market, tmp_path):
    bad = _weights(tmp_path / "bn.pth", 1, _negative_var)
    out = tmp_path / "f.h5"
    run_error("extract", "--data", market, "--out", out, *SMALL, "--weights", bad,
              match=rf"{re.escape(str(bad))}: its BatchNorm statistics are corrupt \(backbone\.bn1\.running_var: "
              r"64 negative variances\); every feature would be NaN$")
    assert not out.exists()


def test_7_non_finite_weights_are_refused_before_extraction(market, tmp_path):
    bad = _weights(tmp_path / "nan.pth", 1, lambda s: s["layer1.0.bn1.running_mean"].fill_(float("nan")))
    run_error("extract", "--data", market, "--out", tmp_path / "f.h5", *SMALL, "--weights", bad,
              match=rf"{re.escape(str(bad))}: holds values that are not finite "
              r"\(backbone\.layer1\.0\.bn1\.running_mean: 64 NaN/Inf\); every feature would be NaN$")
    config = ModelConfig("resnet18", height=64, width=32)
    model = ReidModel(config)
    with torch.no_grad():
        model.backbone.conv1.weight[0, 0, 0, 0] = float("inf")
    ckpt = tmp_path / "inf.pt"
    save_checkpoint(ckpt, model)
    run_error("evaluate", "--checkpoint", ckpt, "--data", market, "--workers", "0", "--device", "cpu",
              match=rf"{re.escape(str(ckpt))}: holds values that are not finite \(backbone\.conv1\.weight: 1 NaN/Inf\)")


def test_7_features_that_overflow_are_refused_not_written(market, tmp_path):
    """Finite weights so large that the forward pass overflows: caught after extraction."""
    bad = _weights(tmp_path / "huge.pth", 1, lambda s: s["conv1.weight"].mul_(1e38))
    out = tmp_path / "f.h5"
    run_error("extract", "--data", market, "--out", out, *SMALL, "--weights", bad,
              match=r"the model gives features that are not finite \(NaN or Inf\) for \d+ of \d+ images "
              r"\(e\.g\. bounding_box_train/\S+\.jpg\); its weights are unusable")
    assert not out.exists()


def _flat_market(root):
    """A market whose train images are all one flat grey: every channel's std is 0."""
    colour_market(root, train_ids=4, test_ids=3)
    for image in (root / "bounding_box_train").iterdir():
        Image.new("RGB", (16, 32), (128, 128, 128)).save(image)
    return root


def test_7_dataset_statistics_with_std_0_are_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDCTL_CACHE", str(tmp_path / "cache"))
    data = _flat_market(tmp_path / "flat")
    out = tmp_path / "f.h5"
    run_error("extract", "--data", data, "--out", out, *RANDOM, "--input-norm", "dataset",
              match=r"the train split's per-channel statistics \(24 images at 64×32\): red std [^,]+, green std "
              r"[^,]+, blue std [^,]+, so --input-norm dataset cannot normalise the images")
    assert not out.exists()


def test_7_check_norm():
    check_norm(IMAGENET, "imagenet")
    for norm, word in [(Norm((0.5, 0.5, 0.5), (0.2, 0.0, 0.2)), "green std 0"),
                       (Norm((0.5, 0.5, 0.5), (0.2, 0.2, 1e-9)), "blue std 1e-09"),
                       (Norm((float("nan"), 0.5, 0.5), (0.2, 0.2, 0.2)), "red mean nan")]:
        with pytest.raises(DatasetError, match=f"^x: {word}, so --input-norm dataset cannot normalise"):
            check_norm(norm, "x")
