"""A trained model outside reidctl: `reidctl.load_model`, `reidctl export` (TorchScript, ONNX)
and `reidctl inspect model.pt` (part of issue 16)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import reidctl
from reidctl.artifacts import read_features
from reidctl.data.datasets import load_dataset
from reidctl.data.transforms import IMAGENET_MEAN
from reidctl.models.features import ImageRows
from reidctl.models.checkpoint import load_checkpoint, model_from_checkpoint
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["--workers", "0", "--device", "cpu", "--deterministic"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One cc epoch on a colour market: (dataset root, checkpoint), ImageNet normalisation."""
    root = tmp_path_factory.mktemp("deploy")
    data = colour_market(root / "market", train_ids=4, test_ids=2)
    run_ok("loop", "--data", data, "--run-dir", root / "run", "--epochs", "1", "--arch", "resnet18", "--pretrained", "none",
           "--height", "64",
           "--width", "32", "--k1", "6", "--k2", "2", "--eps", "0.5", "--min-samples", "3", "--iters", "1",
           "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2", "--eval-every", "0", *RUN)
    return data, root / "run" / "epoch_000" / "model.pt"


def _preprocessed(data, module) -> torch.Tensor:
    """The train images as `extract` reads them, normalised with the module's own preprocessing."""
    prep = module.preprocessing
    rows = ImageRows(load_dataset(data).train, prep["height"], prep["width"])
    x = torch.stack([rows[i][0] for i in range(len(rows))]).float() / 255
    mean, std = torch.tensor(prep["mean"]).view(1, 3, 1, 1), torch.tensor(prep["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def test_load_model_gives_the_features_extract_stores(trained, tmp_path):
    data, ckpt = trained
    module = reidctl.load_model(ckpt)
    assert not module.training and module.preprocessing["mean"] == list(IMAGENET_MEAN)
    assert (module.preprocessing["height"], module.preprocessing["width"]) == (64, 32)
    feats = tmp_path / "train.h5"
    run_ok("extract", "--data", data, "--checkpoint", ckpt, "--out", feats, "--device", "cpu")
    with torch.no_grad():
        ours = module(_preprocessed(data, module)).numpy()
    np.testing.assert_allclose(ours, read_features(feats).feats, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_torchscript_export_matches_and_records_its_preprocessing(trained, tmp_path):
    data, ckpt = trained
    out = tmp_path / "model.ts"
    run_ok("export", ckpt, "--out", out)
    side = json.loads((tmp_path / "model.ts.json").read_text())
    assert side["format"] == "torchscript" and side["preprocessing"]["mean"] == list(IMAGENET_MEAN)
    module = reidctl.load_model(ckpt)
    x = _preprocessed(data, module)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch ≥ 2.9 marks the jit API deprecated
        exported = torch.jit.load(str(out))(x)
        assert torch.allclose(exported, module(x), atol=1e-5)
    run_ok("export", ckpt, "--out", out)  # an earlier export is replaced; anything else needs --force
    (tmp_path / "notes.ts").write_text("mine")
    run_error("export", ckpt, "--out", tmp_path / "notes.ts", match="already exists and is not a reidctl artifact.*--force")
    run_error("export", ckpt, "--out", ckpt, "--force", match="is also an input")


def test_onnx_export_matches_under_onnxruntime(trained, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    data, ckpt = trained
    out = tmp_path / "model.onnx"
    run_ok("export", ckpt, "--out", out, "--format", "onnx")
    module = reidctl.load_model(ckpt)
    x = _preprocessed(data, module)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["features"], {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), atol=1e-5)


def test_a_dataset_normalised_model_exports_its_training_statistics(trained, tmp_path):
    data, _ = trained
    out = tmp_path / "norm.pt"
    run_ok("train-epoch", "--data", data, "--out", out, "--method", "mar", "--aux-data", "synthetic:tiny-source", "--arch", "resnet18",
           "--pretrained", "none", "--height", "64", "--width", "32", "--batch-size", "16", "--bn-chunks", "2", *RUN)
    recorded = load_checkpoint(out)["provenance"]["norm"]
    assert reidctl.load_model(out).preprocessing["mean"] == recorded["mean"] != list(IMAGENET_MEAN)


def test_bad_checkpoint_files_are_one_error_line(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    run_error("export", junk, "--out", tmp_path / "x.ts", match="not a checkpoint \\(not a file written by torch.save")
    run_error("export", tmp_path / "missing.pt", "--out", tmp_path / "x.ts", match="no such checkpoint")
    run_error("export", junk, "--out", tmp_path / "x.ts", "--format", "tflite", match="choose torchscript or onnx")


def test_inspect_a_checkpoint(trained):
    _, ckpt = trained
    info = json.loads(run_ok("inspect", ckpt, "--json").stdout)
    model = model_from_checkpoint(ckpt)
    assert info["method"] == "cc" and info["epoch"] == 0 and info["model_config"]["arch"] == "resnet18"
    assert info["parameters"] == sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    assert info["method_params"]["iters"] == 1 and len(info["history"]) == 1
    table = run_ok("inspect", ckpt).stdout
    assert "epoch 0" in table and "resnet18" in table
