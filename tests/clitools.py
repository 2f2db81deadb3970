"""One way for every CLI test to run a command and check how it ended.

Typer's ``CliRunner`` swallows exceptions: a command that crashed with a traceback still returns
a result whose ``output`` holds no "Traceback" text; the exception sits in ``result.exception``
(``SystemExit`` for a clean ``typer.Exit``). So a test checks that attribute, never the text.
"""

from __future__ import annotations

import re
from typing import Any

from typer.testing import CliRunner

from reidctl.cli import app

runner = CliRunner()


def invoke(*args: Any):
    """Run ``reidctl ARGS`` in-process; returns Typer's result object."""
    return runner.invoke(app, [str(a) for a in args])


def run_ok(*args: Any):
    """Run a command that must succeed: exit 0 and no exception of any kind."""
    result = invoke(*args)
    assert result.exception is None and result.exit_code == 0, (args, result.output, result.exception)
    return result


def run_error(*args: Any, match: str, code: int = 2):
    """Run a command that must fail as a user error: a clean exit with ``code`` (not a crash),
    one ``error:`` line on stderr that matches the regular expression ``match``."""
    result = invoke(*args)
    assert isinstance(result.exception, SystemExit), (args, result.output, result.exception)
    assert result.exit_code == code, (args, result.exit_code, result.output)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, (args, result.stderr)
    assert re.search(match, errors[0]), (match, errors[0])
    return result
