"""Issue 27: every command's help is fast (printed from the help manifest, no torch), the same as
the command's own, grouped into panels, true (flags that exist, brackets kept, booleans as flags),
and a usage error ends in one ``error:`` line like every other error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from reidctl.cli import COMMANDS
from tests.clitools import invoke, run_error, run_ok

WIDE = {"COLUMNS": "1000"}  # one line per help text: nothing wrapped away
NARROW = {"COLUMNS": "100"}
HEAVY = ("torch", "torchvision", "numpy", "h5py")


def _live_group():
    from reidctl.cli import app

    return typer.main.get_command(app)


def _help(*args: str, env: dict[str, str] = NARROW) -> str:
    from reidctl.cli import app

    result = CliRunner().invoke(app, [*args, "--help"], env=env)
    assert result.exit_code == 0 and result.exception is None, (args, result.output)
    return result.stdout


def _all_params():
    """(command, click parameter) of every command."""
    for name, cmd in _live_group().commands.items():
        for param in cmd.params:
            yield name, param


# ------------------------------------------------------------------------------ speed


def test_help_manifest_is_current():
    """A changed command (an option added, a help text edited) without a re-written manifest fails
    here, naming the fix."""
    from reidctl.cli.manifest import stale_commands

    assert stale_commands() == [], "run: python -m reidctl.cli.manifest --write"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_manifest_help_equals_the_live_help(name):
    from reidctl.cli.help import help_app

    fast = help_app(name)
    assert fast is not None, f"{name} is not in the help manifest; run: python -m reidctl.cli.manifest --write"
    for flag in ("--help", "-h"):
        result = CliRunner().invoke(fast, [name, flag], env=NARROW)
        assert result.exit_code == 0 and result.exception is None, result.output
        assert result.stdout == _help(name), (name, flag)


def test_command_help_imports_no_heavy_module_and_prints_the_live_help():
    """``reidctl COMMAND --help`` through the entry point, every command in one fresh process:
    not one of torch, torchvision, numpy, h5py is imported, and each prints the command's help."""
    code = ("import sys\nfrom reidctl.cli import COMMANDS, main\n"
            "for name in COMMANDS:\n"
            "    print('@@', name, flush=True)\n"
            "    try:\n        main([name, '--help'])\n    except SystemExit as exc:\n        assert not exc.code, exc.code\n"
            f"print('IMPORTED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, **NARROW})
    body, imported = proc.stdout.rsplit("IMPORTED ", 1)
    assert imported.strip() == "[]", imported
    printed = dict(part.split("\n", 1) for part in body.split("@@ ")[1:])
    assert list(printed) == list(COMMANDS)
    for name, text in printed.items():
        assert text == _help(name), name


def test_only_plain_help_takes_the_fast_path(monkeypatch):
    """Anything but ``COMMAND --help`` (or ``-h``) runs the command as usual."""
    import reidctl.cli.help as fast

    asked = []
    monkeypatch.setattr(fast, "print_command_help", lambda name, flag: asked.append((name, flag)) or True)
    from reidctl.cli import main

    main(["inspect", "-h"])
    assert asked == [("inspect", "-h")]
    with pytest.raises(SystemExit, match="0"):
        main(["inspect", "--json", "--help"])  # the live command's help
    assert asked == [("inspect", "-h")]


# ------------------------------------------------------------------------------ panels


LOOP_PANELS = ["Data", "Model", "Clustering", "Method", "Method: pplr", "Method: icrefine", "Method: ncplr, gl-ncplr",
               "Method: mar", "Training", "Run", "Runtime"]


def _panels(text: str) -> dict[str, list[str]]:
    """Panel title → the options (first spelling) in it, from rendered help."""
    panels: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        title = re.match(r"╭─ (.+?) ─", line)
        if title:
            current = panels.setdefault(title.group(1), [])
        elif current is not None:
            flag = re.match(r"│\s+(?:\*\s+)?(--[\w-]+)", line)
            if flag:
                current.append(flag.group(1))
    return panels


def test_loop_help_is_grouped_into_panels():
    panels = _panels(_help("loop", env=WIDE))
    assert list(panels) == LOOP_PANELS  # no "Options" panel: every loop option has its place
    where = {flag: title for title, flags in panels.items() for flag in flags}
    expected = {"--data": "Data", "--dataset": "Data", "--arch": "Model", "--checkpoint": "Model",
                "--k1": "Clustering", "--knn-backend": "Clustering", "--method": "Method",
                "--beta": "Method: pplr", "--intra": "Method: icrefine", "--intra-lr": "Method: icrefine",
                "--global-local": "Method: ncplr, gl-ncplr", "--aux-data": "Training",
                "--pretrain-lr": "Method: mar", "--lr": "Training", "--batch-size": "Training",
                "--momentum": "Training", "--run-dir": "Run", "--epochs": "Run", "--keep": "Run",
                "--device": "Runtime", "--json": "Runtime", "--help": "Runtime"}
    assert {flag: where.get(flag) for flag in expected} == expected


def test_an_option_has_one_panel_in_every_command():
    """An option made from one declaration (same spelling, same help) sits in the same panel in
    every command that has it; the panel comes from the declaration, not from the command."""
    seen: dict[tuple[str, str], set[str | None]] = {}
    for _, param in _all_params():
        if isinstance(param, typer.core.TyperOption):
            seen.setdefault((param.opts[0], param.help), set()).add(param.rich_help_panel)
    assert all(len(panels) == 1 for panels in seen.values()), {k[0]: v for k, v in seen.items() if len(v) > 1}
    assert seen[("--k1", _param("cluster", "--k1").help)] == {"Clustering"}
    assert _param("refine", "--k1").rich_help_panel == _param("loop", "--k1").rich_help_panel == "Clustering"
    assert _param("train-epoch", "--aux-data").rich_help_panel == _param("loop", "--aux-data").rich_help_panel == "Training"


def _param(command: str, flag: str):
    return next(p for p in _live_group().commands[command].params if flag in getattr(p, "opts", ()))


# ------------------------------------------------------------------------------ flags and text


def test_boolean_options_are_flags_without_a_value_placeholder():
    """A boolean option takes no value (``--json true`` is an error), so its help row shows none;
    a boolean that is on by default can be turned off (``--no-x``)."""
    booleans = [(name, p) for name, p in _all_params() if isinstance(p, typer.core.TyperOption) and _is_bool(p)]
    assert len(booleans) > 30
    for name, param in booleans:
        assert param.is_flag, (name, param.opts)
        if param.default:
            assert param.secondary_opts, (name, param.opts)
    for name in COMMANDS:
        assert "<bool>" not in _help(name), name
    run_error("inspect", "x.h5", "--json", "true", match=r"^error: Got unexpected extra argument\(s\) \(true\)$")


def _is_bool(param) -> bool:
    """A boolean option (Typer ≥ 0.2x keeps the annotation; a Click-based Typer a BOOL type)."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        return descriptor.annotation is bool
    return type(getattr(param, "type", None)).__name__ == "BoolParamType"


def test_knn_backend_help_shows_reidctl_faiss():
    text = _help("cluster", env=WIDE)
    line = next(line for line in text.splitlines() if "--knn-backend" in line)
    assert "pip install 'reidctl[faiss]'" in line


def test_no_help_text_loses_a_bracketed_part():
    """Help is plain text: a ``[...]`` in it is shown as written (not taken as rich markup), and
    no help text carries a markup escape of its own."""
    for name in COMMANDS:
        text = _help(name, env=WIDE)
        cmd = _live_group().commands[name]
        helps = [p.help for p in cmd.params if getattr(p, "help", None)] + [cmd.help or ""]
        for help_text in helps:
            for part in re.findall(r"\[[^\]]*\]", _plain(help_text)):
                assert part in text, (name, part)
        assert "\\[" not in text, name


def _plain(text: str) -> str:
    """A help text as written (the command's tidy-up escapes it for rich)."""
    return text.replace("\\[", "[")


def test_top_level_summaries_keep_brackets(monkeypatch, capsys):
    from rich.console import Console

    from reidctl.cli import help as fast

    monkeypatch.setitem(fast.COMMANDS, "inspect", ("inspect_cmd", "Print an [x] artifact."))
    fast.print_top_help(Console(width=200))
    assert "Print an [x] artifact." in capsys.readouterr().out


def _every_flag() -> set[str]:
    flags = {"--help", "-h", "--version"}
    for _, param in _all_params():
        flags.update(getattr(param, "opts", ()), getattr(param, "secondary_opts", ()))
    return flags


def test_every_flag_named_in_a_help_text_is_a_reidctl_option():
    """A help text that sends the user to ``--x`` names an option some reidctl command has (the
    ``--memory-update`` help once cited the official code's ``--use-hard``)."""
    real = _every_flag()
    texts = [summary for _, summary in COMMANDS.values()]
    for name, cmd in _live_group().commands.items():
        texts += [cmd.help or ""] + [p.help or "" for p in cmd.params if getattr(p, "help", None)]
    named = {flag for text in texts for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", _plain(text))}
    assert named - real == set()
    assert len(named) > 20


def test_memory_update_help_names_no_foreign_flag():
    text = _help("train-epoch", env=WIDE)
    line = next(line for line in text.splitlines() if "--memory-update" in line)
    assert "--use-hard" not in line and "hard" in line


# ------------------------------------------------------------------------------ usage errors


@pytest.mark.parametrize("args, message, where", [
    (["loop", "--bogus"], r"No such option: --bogus", "reidctl loop"),
    (["cluster"], r"Missing argument 'FEATURES'\.", "reidctl cluster"),
    (["cluster", "f.h5", "--k1", "many"], r"Invalid value for '--k1': .*integer", "reidctl cluster"),
    (["evaluate", "--ap"], r"Option '--ap' requires an argument\.", "reidctl evaluate"),
    (["inspect", "a.h5", "b.h5"], r"Got unexpected extra argument\(s\) \(b\.h5\)", "reidctl inspect"),
    (["bogus"], r"No such command 'bogus'\.", "reidctl"),
    (["--bogus"], r"No such option: --bogus", "reidctl"),
])
def test_usage_errors_end_in_one_error_line_and_a_hint(args, message, where):
    result = run_error(*args, match=f"^error: {message}$")
    assert result.stderr.splitlines() == [result.stderr.splitlines()[0], f"(see: {where} --help)"]
    assert result.stdout == ""


def test_a_bad_choice_ends_in_one_error_line():
    result = run_error("refine", "f.h5", "--method", "nope", match=r"^error: unknown --method 'nope' \(choose one of cc, ")
    assert len(result.stderr.splitlines()) == 1


def test_no_arguments_still_prints_the_help():
    result = invoke()
    assert "Usage: reidctl" in result.stdout and "error:" not in result.stderr


def test_usage_error_through_the_entry_point():
    """The installed ``reidctl`` (``main``) ends a usage error the same way, exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "reidctl", "report", "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    error, hint = proc.stderr.splitlines()
    assert error.startswith("error: No such option: --bogus") and hint == "(see: reidctl report --help)"
    assert proc.stdout == ""


# ------------------------------------------------------------------------------ --keep's refusal


def test_keep_refusal_says_what_works(tmp_path):
    """After ``--keep`` deleted old epochs' files, a changed option refuses to run those stages
    again; the refusal names what works (``--force-from extract`` in the same folder, or a new
    --run-dir) and not "without --keep", which fails the same way."""
    from tests.test_run_config import TINY

    run = tmp_path / "run"
    run_ok("loop", *TINY, "--epochs", "2", "--keep", "1", "--run-dir", run, "--json")
    refused = run_error("loop", "--config", run / "config.toml", "--lr", "0.001",
                        match=r"deleted by --keep; re-run every epoch with --force-from extract, or use a new --run-dir")
    assert "without --keep" not in refused.stderr
    config = run / "config.toml"
    without_keep = config.read_text().replace("keep = 1\n", "")
    assert without_keep != config.read_text()
    (tmp_path / "nokeep.toml").write_text(without_keep)
    run_error("loop", "--config", tmp_path / "nokeep.toml", "--run-dir", run, "--lr", "0.001", match=r"deleted by --keep")
    again = json.loads(run_ok("loop", "--config", config, "--lr", "0.001", "--force-from", "extract", "--json").stdout)
    assert not any(s["cached"] for s in again["stages"] if s["folder"] != "epoch_init")
