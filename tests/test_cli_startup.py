"""`reidctl --help` and `--version` without importing any command (issue 17): the command table
that the top-level help prints stays equal to the commands' own help. Each command's own
``--help`` is printed without importing it too: tests/test_cli_help.py (issue 27)."""

from __future__ import annotations

import subprocess
import sys

import typer
from rich.markup import escape

from reidctl.version import __version__
from reidctl.cli import COMMANDS
from tests.clitools import run_ok


def test_command_table_matches_the_registered_commands():
    from reidctl.cli import app

    group = typer.main.get_command(app)
    assert list(group.commands) == list(COMMANDS)  # the same commands, in the same (help) order
    for name, cmd in group.commands.items():
        module, summary = COMMANDS[name]
        assert cmd.callback.__module__ == f"reidctl.cli.{module}"
        assert cmd.get_short_help_str(limit=10_000) == escape(summary), name  # help is escaped for rich


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


#: Flags that mean something else in some commands, on purpose: --batch-size is the training batch
#: in the training commands (the extraction batch there is --extract-batch-size), and synth's
#: --force replaces a dataset folder rather than an artifact file.
OWN_MEANING = {"--batch-size": {"intra-camera", "pretrain", "train-epoch", "loop"}, "--force": {"synth"}}


def test_shared_options_have_one_help_and_one_default():
    """Every command that has a run option (--workers, --device, --amp, --seed, --json ...) takes it
    from its one declaration, the library's reidctl.runtime.Runtime or the command line's own
    reidctl.cli.options.CommandOptions: same help text, same default."""
    from reidctl.cli import app
    from reidctl.cli.options import CommandOptions
    from reidctl.options import flag_of, option_fields
    from reidctl.runtime import Runtime

    shared = {flag_of(name): (info.help, getattr(cls(), name))
              for cls in (Runtime, CommandOptions) for name, _, info in option_fields(cls)}
    group = typer.main.get_command(app)
    checked = 0
    for cmd_name, cmd in group.commands.items():
        for param in cmd.params:
            flag = param.opts[0] if getattr(param, "opts", None) else None
            if flag not in shared or cmd_name in OWN_MEANING.get(flag, ()):
                continue
            assert (param.help, param.default) == shared[flag], (cmd_name, flag)
            checked += 1
    assert checked > 40
