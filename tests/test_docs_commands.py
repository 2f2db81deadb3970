"""Every command line quoted in README.md, docs/ and examples/*.sh still parses (issue 27).

Why: a renamed or removed flag leaves the docs telling users to type something the program
refuses. Each quoted ``reidctl COMMAND ...`` line (fenced blocks, inline code spans, shell
examples) is parsed by the live Click command with ``--help`` appended: an unknown option or a
missing option value fails here, while placeholders such as ``DATA`` need not exist. Option
values of a closed type (numbers, booleans, and ``--method``) are converted too, so ``--epochs
many`` or ``--method pplrx`` fail as well; upper-case placeholders (``X``, ``N``) and shell
variables are left alone.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from reidctl.cli import COMMANDS
from tests.clitools import invoke

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "examples").glob("*.sh")])
#: shell tokens after which the command line is over (redirections, pipes, comments)
ENDS = {">", ">>", "<", "|", "2>&1", "&", "#"}
#: value types that can be checked without touching the file system
CLOSED = (int, float, bool)


def _fenced_and_inline(text: str) -> list[str]:
    """The code of a markdown file: each line of a fenced block (continuations joined) and each
    inline code span (which may wrap across lines)."""
    pieces: list[str] = []
    outside: list[str] = []
    for i, part in enumerate(re.split(r"^```[^\n]*\n", text, flags=re.M)):
        if i % 2:  # inside a fence
            pieces += part.replace("\\\n", " ").splitlines()
        else:
            outside.append(part)
    for span in re.findall(r"`([^`]+)`", "\n".join(outside)):
        pieces.append(" ".join(span.split()))
    return pieces


def _shell_lines(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def _command_lines(path: Path) -> list[str]:
    text = path.read_text()
    return _shell_lines(text) if path.suffix == ".sh" else _fenced_and_inline(text)


def _reidctl_calls(code: str) -> list[list[str]]:
    """The argument lists of every ``reidctl COMMAND`` call in one line of shell code."""
    calls = []
    for part in re.split(r"&&|\|\||;|\$\(|\)", code):
        try:
            tokens = shlex.split(part, comments=True)
        except ValueError:
            continue  # prose with a lone quote, not a command
        for i, tok in enumerate(tokens):
            if tok != "reidctl" and not tok.endswith("/reidctl"):
                continue
            rest = tokens[i + 1:]
            if not rest or rest[0] not in COMMANDS:
                continue
            args: list[str] = []
            for arg in rest[1:]:
                if arg in ENDS or arg.startswith((">", "2>")):
                    break
                if arg not in ("...", "…"):
                    args.append(arg)
            calls.append(rest[:1] + _synopsis_to_args(args))
    return calls


def _synopsis_to_args(tokens: list[str]) -> list[str]:
    """A synopsis such as ``[--k1 30 --k2 6] [method options]`` as plain arguments: optional
    groups keep their options (a group of prose words, without any option, is dropped)."""
    out: list[str] = []
    group: list[str] | None = None
    for tok in tokens:
        if group is None and tok.startswith("["):
            group, tok = [], tok[1:]
        if group is None:
            out.append(tok)
            continue
        closing = tok.endswith("]")
        group.append(tok.rstrip("]"))
        if closing:
            if any(t.startswith("-") for t in group):
                out += group
            group = None
    return out


def _placeholder(value: str) -> bool:
    """A value the docs leave to the reader: ``N``, ``$RUN``, ``<dir>``, or alternatives ``a|b``."""
    return value.isupper() or any(c in value for c in "$<|…") or "..." in value


def _without_dangling_option(cmd: Any, args: list[str]) -> list[str]:
    """Prose may name an option without its value (``reidctl loop --run-dir``): drop that option."""
    if args and args[-1].startswith("--"):
        param = next((p for p in cmd.params if args[-1] in p.opts), None)
        if param is not None and not param.is_flag:
            return args[:-1]
    return args


def quoted_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for code in _command_lines(path):
            for call in _reidctl_calls(code):
                found.append((f"{path.relative_to(ROOT)}: reidctl {' '.join(call)}", call))
    return found


QUOTED = quoted_commands()


def test_the_docs_quote_many_commands():
    assert len(QUOTED) > 100, len(QUOTED)
    assert {call[0] for _, call in QUOTED} == set(COMMANDS)  # every command is shown somewhere


def _group():
    from reidctl.cli import app

    return typer.main.get_command(app)


def value_problems(cmd: Any, name: str, args: list[str]) -> list[str]:
    """The option values in ``args`` that the command would refuse (closed types only)."""
    from reidctl.methods import METHODS

    ctx = cmd.context_class(cmd, info_name=name, resilient_parsing=True)
    opts, _, _ = cmd.make_parser(ctx).parse_args(args=list(args))
    problems = []
    for param in cmd.params:
        values = opts.get(param.name)
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if not isinstance(value, str) or _placeholder(value):
                continue
            if param.name == "method" and value not in METHODS:
                problems.append(f"--method {value}: no such method")
            descriptor = getattr(param, "type_descriptor", None)
            if descriptor is not None and descriptor.annotation in CLOSED:
                try:
                    param.get_runtime_param().coerce(value, param=param, ctx=ctx)
                except Exception as exc:  # the CLI's own refusal of this value
                    problems.append(f"{param.opts[0]} {value}: {exc}")
    return problems


@pytest.mark.parametrize("where,call", QUOTED, ids=[w for w, _ in QUOTED])
def test_a_quoted_command_parses(where, call):
    name = call[0]
    args = _without_dangling_option(_group().commands[name], call[1:])
    result = invoke(name, "--help", *args)  # help first: it wins over eager options such as --config
    assert result.exit_code == 0 and isinstance(result.exception, (SystemExit, type(None))), result.output
    assert value_problems(_group().commands[name], name, args) == []


def test_a_renamed_flag_or_a_wrong_value_fails_the_check():
    result = invoke("loop", "--method", "cc", "--epochz", "3", "--help")
    assert result.exit_code == 2 and "--epochz" in result.output
    loop = _group().commands["loop"]
    problems = value_problems(loop, "loop", ["--method", "pplrx", "--epochs", "many", "--eps", "DATA", "--iters", "N"])
    assert [p.split(":")[0] for p in problems] == ["--method pplrx", "--epochs many"]
    assert _synopsis_to_args("--x 1 [--k1 30 --k2 6] [method options] [--deterministic]".split()) == [
        "--x", "1", "--k1", "30", "--k2", "6", "--deterministic"]
    calls = _reidctl_calls("python -m reidctl loop --data d --epochs 3 > log 2>&1 && reidctl inspect F # x")
    assert calls == [["loop", "--data", "d", "--epochs", "3"], ["inspect", "F"]]
