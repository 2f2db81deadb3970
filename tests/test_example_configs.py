"""examples/configs/: every official-command config loads, names only `loop` options, and resolves
for its method (issue 17). The runs themselves need the real datasets and GPUs; here each config
is checked up to the first stage, on synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest

from reidctl.pipeline.configfile import read_config
from tests.clitools import run_ok

CONFIGS = sorted((Path(__file__).parent.parent / "examples" / "configs").glob("*.toml"))
#: What tiny synthetic data cannot have: the real datasets, a source, 800 clusters of 60 images.
TINY = {"mar": ["--aux-data", "synthetic:tiny-source"], "icrefine": ["--n-clusters", "10", "--intra-clusters", "5"]}


def test_there_is_a_config_per_method_and_dataset():
    names = {p.stem for p in CONFIGS}
    for method in ("cc", "pplr", "icrefine", "gl-ncplr"):
        assert {f"{method}_market1501", f"{method}_msmt17"} <= names
    assert {"mar_market1501", "quickstart_cpu"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_resolves_up_to_the_first_stage(config, tmp_path):
    method = read_config(config)["method"]
    # --dry-run resolves and checks every option as a run does, and prints its config.toml
    out = run_ok("loop", "--config", config, "--data", "synthetic:tiny", "--run-dir", tmp_path / "run", "--device",
                 "cpu", *TINY.get(method, []), "--dry-run")
    assert not (tmp_path / "run").exists()
    (tmp_path / "printed.toml").write_text(out.stdout)
    written = read_config(tmp_path / "printed.toml")
    assert written["method"] == method
    for key, value in read_config(config).items():
        if key not in ("data", "run_dir") and not any(f"--{key.replace('_', '-')}" in a for a in TINY.get(method, [])):
            assert written[key] == value, key  # the file's values are what the run resolved to
