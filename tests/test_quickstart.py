"""README command 1 prints the table the README shows (issue 17).

The README's figures come from the offline form of command 1 (`--weights` with the shared
ImageNet MobileNetV2 features instead of torchvision's download), with two torch threads as on
the 2-core machine that measured them. This re-runs that command in a fresh process and cache
(the synthetic data is drawn again) and compares the printed table line by line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_table() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- quickstart-table -->\n```text\n(.*?)\n```", text, re.S)
    assert block, "README lost its quick-start table"
    return [line.rstrip() for line in block.group(1).splitlines()]


def readme_command() -> list[str]:
    text = README.read_text(encoding="utf-8")
    line = next(l for l in text.splitlines() if l.startswith("python3 -m venv .venv") and "reidctl loop" in l)
    return line.split("&& reidctl ", 1)[1].split()


@pytest.mark.slow
def test_command_one_prints_the_readme_table(tmp_path):
    weights = shared_path("weights", "mobilenet_v2_imagenet_features.pth")
    args = readme_command()
    i = args.index("--pretrained")
    assert args[i + 1] == "imagenet"
    args[i : i + 2] = ["--weights", str(weights)]  # the offline form the README's figures come from
    env = {**os.environ, "REIDCTL_CACHE": str(tmp_path / "cache"), "COLUMNS": "80", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "reidctl", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = [line.rstrip() for line in proc.stdout.splitlines()]
    table = readme_table()
    start = printed.index(table[0])  # after the title (the run folder, wrapped when long)
    assert printed[start:] == table
