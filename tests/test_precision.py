"""float32 unless mixed precision is asked for, channels-last without changing the numbers beyond
float rounding, and help texts that say what the code does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import typer.main

from reidctl.cli.common import app
from reidctl.runtime import Runtime
from reidctl.errors import ReidctlError
from reidctl.stages.extract import ExtractRequest
from reidctl.methods import ClusterContrast
from reidctl.methods.icrefine.stage1 import IntraCameraRequest
from reidctl.models.reid import ModelConfig
from reidctl.models.weights import build_model
from reidctl.pipeline.loop import LoopConfig
from reidctl.runtime.precision import DEFAULT_AMP, precision_name, resolve_amp
from reidctl.stages.train_epoch import TrainEpochRequest
from reidctl.train.trainer import TrainSession

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_float32_is_the_default_everywhere():
    assert DEFAULT_AMP == "off" and resolve_amp(DEFAULT_AMP, CUDA) is None
    for default in (Runtime().amp, LoopConfig(data="d", run_dir="r").runtime.amp, TrainEpochRequest().runtime.amp,
                    ExtractRequest().runtime.amp, IntraCameraRequest().runtime.amp):
        assert default == "off"
    model = build_model(ModelConfig("resnet18", "gem", 0, 1, 64, 32), pretrained="none", weights=None)
    assert TrainSession(model, ClusterContrast()).amp_dtype is None


def test_mixed_precision_only_when_asked_and_only_on_cuda():
    assert resolve_amp("fp16", CUDA) == torch.float16 and resolve_amp("bf16", CUDA) == torch.bfloat16
    assert resolve_amp("fp16", CPU) is None and resolve_amp("bf16", CPU) is None  # a CPU stays float32
    assert precision_name("bf16", CUDA) == "bfloat16" and precision_name("off", CUDA) == "off"
    with pytest.raises(ReidctlError, match=r"^--amp fp8: choose one of off, auto, bf16, fp16$"):
        resolve_amp("fp8", CPU)


def _command_option(command: str, flag: str):
    cmd = typer.main.get_command(app).commands[command]
    return next(p for p in cmd.params if flag in p.opts)


@pytest.mark.parametrize("command", ["extract", "train-epoch", "loop", "intra-camera"])
def test_the_amp_help_says_float32_is_the_default(command):
    opt = _command_option(command, "--amp")
    assert opt.default == "off"
    assert opt.help.startswith("Mixed precision on CUDA: off (float32, as the official codes)")
    assert "CPU always computes in float32" in opt.help


@pytest.mark.parametrize(("command", "flag", "default"), [
    ("train-epoch", "--workers", None), ("loop", "--workers", None), ("extract", "--batch-size", None),
    ("loop", "--extract-batch-size", None), ("extract", "--device", "auto"), ("loop", "--seed", 1),
])
def test_run_options_show_the_default_the_code_uses(command, flag, default):
    opt = _command_option(command, flag)
    assert opt.default == default and opt.show_default is not False


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_channels_last_computes_the_same_features_within_float_rounding(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch, "gem", 0, 1, 64, 32), pretrained="none", weights=None).eval()
    x = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        plain = model.embed(x)["global"]
        fast = model.to(memory_format=torch.channels_last).embed(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(plain, fast["global"], atol=1e-5)
    assert not torch.equal(plain, torch.zeros_like(plain))


def test_extraction_bytes_then_batch_normalisation_equal_the_test_transform(tmp_path):
    from PIL import Image

    from reidctl.data.transforms import ResizedBytes, normalize_batch, test_transform

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(150, 70, 3), dtype=np.uint8))
    expected = test_transform(128, 64)(img)
    got = normalize_batch(ResizedBytes(128, 64)(img)[None], CPU, torch.channels_last)[0]
    assert got.dtype == torch.float32 and torch.equal(got, expected)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_the_folded_inference_model_computes_the_same_features(arch):
    from reidctl.models.inference import inference_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch, "gem", 2, 1, 64, 32), pretrained="none", weights=None)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # statistics that matter
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    model.eval()
    folded = inference_model(model, CPU, torch.channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.backbone.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())  # the original is kept
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        want, got = model.embed(x), folded.embed(x.contiguous(memory_format=torch.channels_last))
    for key in ("global", "parts"):
        assert torch.allclose(want[key], got[key], atol=1e-6), key
