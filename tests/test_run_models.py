"""A run always has a model to use, and its files say what they are (issue 27).

`loop` leaves ``last.pt`` and ``best.pt`` (the initial model when no trained epoch beats it, so
the README's ``export runs/cc/best.pt`` works), ``summary.json`` says which file is best and
why; ``export RUN_DIR`` picks ``best.pt`` then ``last.pt`` and writes beside it; the format
follows ``--out``'s suffix; ``inspect`` describes exported models, ``summary.json`` and
``config.toml`` without running anything; ``config.toml`` works from any folder (docs item 6)
and is not rewritten by a refused run (reliability defect 9).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import reidctl.pipeline.loop
from reidctl.artifacts import read_features
from reidctl.pipeline.configfile import RELATIVE_KEY, read_config
from reidctl.models.spec import ModelSpec
from reidctl.models.checkpoint import load_checkpoint, save_checkpoint
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market

pytestmark = pytest.mark.usefixtures("one_thread")

RUNTIME = ["--workers", "0", "--device", "cpu"]
MODEL = ["--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32"]
LOOP = [*MODEL, "--iters", "1", "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2", "--k1", "4",
        "--k2", "2", "--eps", "0.5", "--min-samples", "2", *RUNTIME, "--deterministic"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return colour_market(tmp_path_factory.mktemp("models") / "market", train_ids=4, test_ids=2)


@pytest.fixture(scope="module")
def init_best(data, tmp_path_factory) -> Path:
    """Two evaluated epochs, neither better than the initial model: the evaluation reports mAP
    0.9 for the initial model and 0.1 for trained ones (the stage's result, as recorded)."""
    real = reidctl.pipeline.loop.evaluate_feature_file

    def evaluate(path, **kw):
        result = real(path, **kw)
        return dataclasses.replace(result, mAP=0.9 if "epoch_init" in str(path) else 0.1)

    run = tmp_path_factory.mktemp("init_best") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reidctl.pipeline.loop, "evaluate_feature_file", evaluate)
        run_ok("loop", "--data", data, "--run-dir", run, "--epochs", "2", "--eval-every", "1", *LOOP)
    return run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    save_checkpoint(path, ModelSpec(arch="resnet18", pretrained="none", height=64, width=32).build()[0])
    return path


# ------------------------------------------------------------------------ best.pt and last.pt


def test_best_pt_is_the_initial_model_when_no_epoch_beats_it(init_best, data, tmp_path):
    run = init_best
    assert (run / "last.pt").resolve() == (run / "epoch_001" / "model.pt").resolve()
    assert (run / "best.pt").resolve() == (run / "epoch_init" / "model.pt").resolve()
    summary = json.loads((run / "summary.json").read_text())
    best = summary["models"]["best"]
    assert (best["file"], best["epoch"], best["checkpoint"]) == ("best.pt", "init", "epoch_init/model.pt")
    assert "no trained epoch beat the initial model" in best["why"]
    assert summary["models"]["last"]["checkpoint"] == "epoch_001/model.pt"
    assert summary["files"]["best"] == str(run / "best.pt") and summary["files"]["last"] == str(run / "last.pt")
    # the saved initial model is the model the initial evaluation measured
    feats = tmp_path / "init.h5"
    run_ok("extract", "--data", data, "--split", "test", "--checkpoint", run / "best.pt", "--out", feats, *RUNTIME)
    np.testing.assert_allclose(read_features(feats).feats, read_features(run / "epoch_init" / "test.h5").feats,
                               atol=1e-5)


def test_export_run_dir_onnx_when_the_initial_model_is_best(init_best):
    """The acceptance line: `export RUN_DIR --format onnx` on a run whose best model is the initial one."""
    pytest.importorskip("onnx")
    res = json.loads(run_ok("export", init_best, "--format", "onnx", "--json").stdout)
    assert res["out"] == str(init_best / "best.onnx") and res["checkpoint"] == str(init_best / "best.pt")
    assert res["checkpoint_file"] == str((init_best / "epoch_init" / "model.pt").resolve())
    info = json.loads(run_ok("inspect", init_best / "best.onnx", "--json").stdout)
    assert info["kind"] == "onnx" and info["inputs"] == {"images": ["batch", 3, 64, 32]}
    assert info["input_size"] == [64, 32] and info["checkpoint"] == str(init_best / "best.pt")


def test_export_of_the_readme_path_works(init_best, tmp_path):
    """README: `reidctl export runs/cc/best.pt --out model.onnx --format onnx` (TorchScript here)."""
    run_ok("export", init_best / "best.pt", "--out", tmp_path / "model.ts")
    assert (tmp_path / "model.ts").is_file() and (tmp_path / "model.ts.json").is_file()


def test_a_run_without_evaluation_exports_its_last_pt(data, tmp_path):
    run = tmp_path / "run"
    result = json.loads(run_ok("loop", "--data", data, "--run-dir", run, "--epochs", "1", "--eval-every", "0",
                               *LOOP, "--json").stdout)
    assert not (run / "best.pt").exists() and result["files"]["best"] is None
    assert result["models"]["best"]["file"] is None and "use last.pt" in result["models"]["best"]["why"]
    assert (run / "last.pt").resolve() == (run / "epoch_000" / "model.pt").resolve()
    res = run_ok("export", run)
    assert (run / "last.ts").is_file() and "last.pt" in res.stderr
    (tmp_path / "empty").mkdir()
    run_error("export", tmp_path / "empty", match=r"empty: a folder without best\.pt or last\.pt")


# --------------------------------------------------------------------- export names and formats


def test_export_without_out_writes_beside_the_checkpoint(checkpoint):
    result = run_ok("export", checkpoint)  # no usage box: --out has a default
    assert checkpoint.with_suffix(".ts").is_file() and "Usage" not in result.output


def test_defect_10_export_out_onnx_without_format_writes_onnx(checkpoint, tmp_path):
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    run_ok("export", checkpoint, "--out", out)
    onnx.checker.check_model(onnx.load(str(out)))  # ONNX, not TorchScript under an .onnx name
    assert json.loads((tmp_path / "m.onnx.json").read_text())["format"] == "onnx"
    run_error("export", checkpoint, "--out", tmp_path / "x.onnx", "--format", "torchscript",
              match=r"--out .*x\.onnx: a \.onnx name for --format torchscript; name it x\.ts")
    run_error("export", checkpoint, "--out", tmp_path / "x.ts", "--format", "onnx", match=r"name it x\.onnx")
    run_error("export", checkpoint, "--out", tmp_path / "x.pt", match=r"\.pt names reidctl checkpoints; name .* x\.ts")
    assert not list(tmp_path.glob("x.*"))


# --------------------------------------------------------------------------------- inspect


def test_inspect_knows_exported_models_without_loading_them(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "m.ts"
    run_ok("export", checkpoint, "--out", out)
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("inspect must not load a TorchScript file (it runs code)")

    monkeypatch.setattr(torch.jit, "load", refuse)
    info = json.loads(run_ok("inspect", out, "--json").stdout)
    assert (info["kind"], info["format"], info["input_size"]) == ("torchscript", "torchscript", [64, 32])
    assert info["mean"] == pytest.approx([0.485, 0.456, 0.406]) and info["checkpoint"] == str(checkpoint)
    assert info["archive_members"] > 0 and info["code_modules"]
    table = run_ok("inspect", out).stdout
    assert "torchscript" in table and "input size" in table
    record = json.loads(run_ok("inspect", tmp_path / "m.ts.json", "--json").stdout)
    assert record["kind"] == "export record" and record["model_file"] == str(out)
    (tmp_path / "m.ts.json").unlink()
    info = json.loads(run_ok("inspect", out, "--json").stdout)
    assert info["record"] is None and "input size, mean and std are unknown" in info["note"]


def test_inspect_summary_and_config(init_best, tmp_path):
    info = json.loads(run_ok("inspect", init_best / "summary.json", "--json").stdout)
    assert (info["kind"], info["method"], info["epochs_trained"], info["last_epoch"]) == ("run summary", "cc", 2, 1)
    assert info["best"]["epoch"] == "init" and [e["epoch"] for e in info["evaluations"]] == ["init", 0, 1]
    assert "best.pt" in run_ok("inspect", init_best / "summary.json").stdout
    info = json.loads(run_ok("inspect", init_best / "config.toml", "--json").stdout)
    assert info["kind"] == "run config" and info["run_dir"] == str(init_best) and info["method"] == "cc"
    assert info["tables"]["clustering"]["eps"] == 0.5 and info["relative_to_this_file"] == ["run_dir"]
    other = tmp_path / "notes.json"
    other.write_text('{"a": 1}')
    run_error("inspect", other, match=r"notes\.json: not a file reidctl knows")


# ---------------------------------------------------------------------- config.toml anywhere


def test_docs_6_config_works_from_any_folder(data, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    shutil.copytree(data, tmp_path / "a" / "market")
    first = json.loads(run_ok("loop", "--data", "market", "--run-dir", "runs/cc", "--epochs", "1", "--eval-every",
                              "0", *LOOP, "--json").stdout)
    config = tmp_path / "a" / "runs" / "cc" / "config.toml"
    text = config.read_text()
    assert f'{RELATIVE_KEY} = ["run_dir"]' in text and 'run_dir = "."' in text
    assert f'data = "{tmp_path / "a" / "market"}"' in text  # absolute
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = json.loads(run_ok("loop", "--config", config, "--json").stdout)
    assert again["run_dir"] == first["run_dir"] == str(tmp_path / "a" / "runs" / "cc")
    assert all(s["cached"] for s in again["stages"]) and not (tmp_path / "elsewhere" / "runs").exists()
    # a copied run folder names itself
    shutil.copytree(tmp_path / "a" / "runs" / "cc", tmp_path / "copy")
    copied = json.loads(run_ok("loop", "--config", Path("..") / "copy" / "config.toml", "--json").stdout)
    assert copied["run_dir"] == str(tmp_path / "copy") and all(s["cached"] for s in copied["stages"])


def test_docs_6_old_and_hand_written_configs_stay_relative_to_the_working_folder(tmp_path):
    old = tmp_path / "conf" / "c.toml"
    old.parent.mkdir()
    old.write_text('[run]\ndata = "data/market"\nrun_dir = "runs/cc"\n')
    assert read_config(old)["run_dir"] == "runs/cc" and read_config(old)["data"] == "data/market"
    old.write_text(f'{RELATIVE_KEY} = ["run_dir", "data"]\n[run]\ndata = "../d"\nrun_dir = "."\n')
    assert read_config(old) == {"data": str(tmp_path / "d"), "run_dir": str(tmp_path / "conf")}
    old.write_text(f'{RELATIVE_KEY} = "run_dir"\n')
    run_error("loop", "--config", old, match=rf"{RELATIVE_KEY} must be a list of option names")


# ------------------------------------------------------------------------------- defect 9


def test_defect_9_a_refused_loop_leaves_config_toml_alone(data, tmp_path):
    run = tmp_path / "run"
    run_ok("loop", "--data", data, "--run-dir", run, "--epochs", "2", "--keep", "1", "--eval-every", "0", *LOOP)
    before = (run / "config.toml").read_text()
    run_error("loop", "--config", run / "config.toml", "--eps", "0.6", match=r"deleted by --keep")
    assert (run / "config.toml").read_text() == before and read_config(run / "config.toml")["eps"] == 0.5
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
