"""`reidctl --help` and `--version` without importing any command (issue 17): the command table
that the top-level help prints stays equal to the commands' own help."""

from __future__ import annotations

import subprocess
import sys

import typer

from reidctl import __version__
from reidctl.cli import COMMANDS
from tests.clitools import run_ok


def test_command_table_matches_the_registered_commands():
    from reidctl.cli import app

    group = typer.main.get_command(app)
    assert list(group.commands) == list(COMMANDS)  # the same commands, in the same (help) order
    for name, cmd in group.commands.items():
        module, summary = COMMANDS[name]
        assert cmd.callback.__module__ == f"reidctl.cli.{module}"
        assert cmd.get_short_help_str(limit=10_000) == summary, name


def _run_main(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys; from reidctl.cli import main; main(sys.argv[1:]); "
            "heavy = sorted(m for m in ('torch', 'torchvision', 'numpy', 'h5py') if m in sys.modules); "
            "print('IMPORTED', heavy)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)


def test_top_level_help_and_version_import_no_command():
    out = _run_main("--help").stdout
    assert "IMPORTED []" in out
    for name in COMMANDS:
        assert f" {name} " in out
    out = _run_main("--version").stdout
    assert out.splitlines()[0] == f"reidctl {__version__}" and "IMPORTED []" in out


def test_version_through_the_typer_app():
    assert run_ok("--version").stdout.strip() == f"reidctl {__version__}"


def test_a_command_runs_through_main(capsys):
    from reidctl.cli import main

    main(["--version"])
    assert capsys.readouterr().out.strip() == f"reidctl {__version__}"
    proc = subprocess.run([sys.executable, "-m", "reidctl", "inspect", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "Usage: reidctl inspect" in proc.stdout
