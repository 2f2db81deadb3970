"""Runs you can repeat (issue 17): `loop` writes its resolved options to RUN/config.toml and
takes them back with --config; validation errors leave no run folder; files follow the umask."""

from __future__ import annotations

import json
import os
import stat

import pytest

from reidctl.pipeline.configfile import dumps, read_config
from reidctl.errors import ReidctlError
from tests.clitools import run_error, run_ok

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data", "synthetic:tiny", "--epochs", "1", "--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32",
        "--iters", "2", "--batch-size", "16", "--num-instances", "4", "--eval-every", "1", "--device", "cpu",
        "--k1", "6", "--k2", "2", "--eps", "0.5", "--min-samples", "3", "--workers", "0", "--deterministic"]


def _keys(run) -> dict[str, str]:
    return {str(p.relative_to(run)): json.loads(p.read_text())["key"] for p in sorted(run.rglob("*.done.json"))}


def test_config_round_trip_gives_the_same_stages(tmp_path):
    run_ok("loop", *TINY, "--run-dir", tmp_path / "a")
    config = tmp_path / "a" / "config.toml"
    values = read_config(config)
    assert (values["k1"], values["eps"], values["iters"], values["arch"], values["method"]) == (6, 0.5, 2, "resnet18", "cc")
    assert values["lr"] == 0.00035 and values["momentum"] == 0.1  # resolved method defaults are written too
    run_ok("loop", "--config", config, "--run-dir", tmp_path / "b")
    a, b = _keys(tmp_path / "a"), _keys(tmp_path / "b")
    init_best = json.loads((tmp_path / "a" / "summary.json").read_text())["best"]["epoch"] == "init"
    assert len(a) == 8 + init_best and a == b  # every stage, the trained epoch's evaluation (and best.pt's init model)
    assert read_config(tmp_path / "b" / "config.toml") == {**values, "run_dir": str(tmp_path / "b")}


def test_command_line_overrides_the_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(dumps({"run": {"data": "synthetic:tiny", "epochs": 1}, "clustering": {"k1": 1}}))
    run_error("loop", "--config", cfg, "--run-dir", tmp_path / "r", match=r"--k1 must be at least 2")
    assert not (tmp_path / "r").exists()
    cfg.write_text(dumps({"run": {"data": "synthetic:tiny"}, "x": {"bogus": 3, "eps2": 1}}))
    run_error("loop", "--config", cfg, "--run-dir", tmp_path / "r", match=r"c\.toml: unknown loop option\(s\) bogus, eps2")
    cfg.write_text("k1 = [")
    run_error("loop", "--config", cfg, "--run-dir", tmp_path / "r", match=r"c\.toml: not valid TOML")
    run_error("loop", "--config", tmp_path / "none.toml", "--run-dir", tmp_path / "r", match="no such config file")


def test_config_text_and_duplicates(tmp_path):
    text = dumps({"a": {"s": 'say "hi"', "f": 0.5, "b": True, "n": None, "l": [1, 2]}, "empty": {"x": None}}, "head")
    assert text == '# head\n\n[a]\ns = "say \\"hi\\""\nf = 0.5\nb = true\nl = [1, 2]\n'
    (tmp_path / "d.toml").write_text("k1 = 3\n[x]\nk1 = 4\n")
    with pytest.raises(ReidctlError, match=r"option 'k1' is set twice"):
        read_config(tmp_path / "d.toml")


@pytest.mark.parametrize("bad", [["--k1", "1"], ["--eps", "2"], ["--height", "7"], ["--arch", "nope"],
                                 ["--batch-size", "7"], ["--k1", "500"]])
def test_no_run_folder_when_validation_fails(tmp_path, bad):
    run = tmp_path / "run"
    result = run_error("loop", *TINY, "--run-dir", run, *bad, match=".")
    assert not run.exists(), result.stderr


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_artifacts_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        run_ok("extract", "--data", "synthetic:tiny", "--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32",
               "--out", tmp_path / "f.h5", "--device", "cpu", "--workers", "0")
        run_ok("cluster", tmp_path / "f.h5", "--out", tmp_path / "l.h5", "--k1", "6", "--k2", "2", "--eps", "0.5",
               "--min-samples", "3", "--device", "cpu")
    finally:
        os.umask(old)
    for name in ("f.h5", "l.h5"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_keep_prunes_old_epochs_and_best_points_at_the_best(tmp_path):
    run = tmp_path / "run"
    first = json.loads(run_ok("loop", *TINY, "--epochs", "3", "--keep", "1", "--run-dir", run, "--json").stdout)
    best = first["best"]["epoch"]
    kept = {2} | ({best} if best != "init" else set())
    for epoch in range(3):
        folder = run / f"epoch_{epoch:03d}"
        artifacts = sorted(p.name for p in folder.iterdir() if p.suffix != ".json")
        records = [json.loads(p.read_text()) for p in folder.glob("*.done.json")]
        if epoch in kept:
            assert "model.pt" in artifacts and not any(r.get("pruned") for r in records)
        else:
            assert artifacts == [] and records and all(r["pruned"] for r in records)
            assert (folder / "eval.json").exists()  # results stay
    link = run / "best.pt"
    if best == "init":  # the initial model, saved in the run
        assert link.resolve() == (run / "epoch_init" / "model.pt").resolve() and first["files"]["best"] == str(link)
    else:
        assert link.resolve() == (run / f"epoch_{best:03d}" / "model.pt").resolve()
    again = json.loads(run_ok("loop", "--config", run / "config.toml", "--json").stdout)
    assert all(s["cached"] for s in again["stages"]) and len(again["stages"]) == len(first["stages"])
    assert not any(s["cached"] for s in first["stages"])
    run_error("loop", "--config", run / "config.toml", "--lr", "0.001", match=r"deleted by --keep")
    run_error("loop", *TINY, "--keep", "0", "--run-dir", tmp_path / "x", match=r"--keep must be at least 1")


def test_reuse_line_and_run_files(tmp_path):
    from reidctl.cli.loop import reuse_line

    stages = [{"folder": "epoch_init", "stage": "extract_test", "cached": True},
              {"folder": "epoch_000", "stage": "extract", "cached": True},
              {"folder": "epoch_000", "stage": "cluster", "cached": False}]
    assert reuse_line(stages) == "2 of 3 stages reused from cache (epoch_init: extract_test; epoch_000: extract)"
    assert reuse_line(stages[2:]) == "all 1 stages ran (none reused from cache)"
    res = run_ok("loop", *TINY, "--run-dir", tmp_path / "r")
    for name in ("summary.json", "log.jsonl", "config.toml"):
        assert str(tmp_path / "r" / name) in res.stderr
