"""The Typer app and the helpers every command module shares."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import typer
from rich.console import Console
from rich.text import Text

from reidctl.errors import ReidctlError

app = typer.Typer(
    name="reidctl",
    help="Unsupervised person re-identification: extract, cluster, refine, train — stage by stage.",  # = help.DESCRIPTION
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

def _print_version(value: bool) -> None:
    if value:
        from reidctl import __version__

        typer.echo(f"reidctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                       callback=_print_version)) -> None:
    """Unsupervised person re-identification: extract, cluster, refine, train — stage by stage."""


err_console = Console(stderr=True)
out_console = Console()


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a ReidctlError into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ReidctlError as exc:
            error(str(exc))
            raise typer.Exit(code=2) from None
        except OSError as exc:  # a file-system failure the library did not name itself
            where = f"{exc.filename}: " if exc.filename else ""
            error(f"{where}{exc.strerror or exc}")
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(code=130) from None

    return wrapper


def command(name: str, *, help: str | None = None, **groups: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command on the app: one-line user errors (:func:`user_errors`) and the flags of
    ``groups`` made from their declarations (:func:`reidctl.cli.method_options.with_options`)."""
    from reidctl.cli.method_options import with_options

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return app.command(name, help=help)(user_errors(with_options(**groups)(_quiet_option(func, name))))

    return decorate


def _quiet_option(func: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``--quiet`` (a runtime option, :class:`reidctl.cli.options.Runtime`): taken out of the
    command's ``run`` options and held as :func:`reidctl.progress.quiet` while the command runs,
    so every progress bar and line of the library below is silenced without a parameter. A
    command that has it runs as a :func:`reidctl.progress.activity`: in a log, a line at least
    every 30 s, also through work without progress lines of its own."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        run = kwargs.get("run")
        if not isinstance(run, dict) or "quiet" not in run:
            return func(*args, **kwargs)
        from reidctl import progress

        kwargs["run"] = {k: v for k, v in run.items() if k != "quiet"}
        with progress.quiet(run["quiet"]), progress.activity(name):
            return func(*args, **kwargs)

    return wrapper


def error(message: str) -> None:
    """The one ``error:`` line of a failed command."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)


def notice(message: str) -> None:
    """Something the user should know that does not stop the command (stderr, yellow)."""
    err_console.print(Text(message, style="yellow"), highlight=False, soft_wrap=True)


def settings(run: dict[str, Any], *drop: str) -> dict[str, Any]:
    """A command's run options (:class:`reidctl.cli.options.Runtime`) as keyword arguments of a
    library call, without those it does not take (``json`` ...)."""
    return {k: v for k, v in run.items() if k not in drop}


def run_request(ctx: typer.Context, request: Any, runner: Callable[[Any, Any], Any], out: Any) -> Any:
    """Check that no model option the user gave is silently overridden by ``--checkpoint``
    (:meth:`ModelSpec.check_given <reidctl.models.spec.ModelSpec.check_given>`), then run."""
    request.check_given(given_options(ctx))
    return runner(request, out)


def given_options(ctx: typer.Context) -> set[str]:
    """Names of the parameters set on the command line (or by environment), not left at default."""
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            given.add(name)
    return given


def flags(ctx: typer.Context, names: set[str]) -> str:
    """The command-line spelling of parameters ``names``, in declaration order: "--arch, --device"."""
    return ", ".join(p.opts[0] for p in ctx.command.params if p.name in names)


def print_json(obj: Any) -> None:
    """Machine-readable result on stdout (for --json)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def multi_camera_cell(summary: dict[str, Any]) -> str:
    """How many clusters span two or more cameras, or "—" when the cameras are unknown."""
    mix = summary.get("camera_mix")
    return "—" if not mix else str(mix["multi_camera_clusters"])


def warn_single_camera(summary: dict[str, Any]) -> None:
    """Print the single-camera warning of :func:`reidctl.cluster.report.single_camera_warning`."""
    from reidctl.cluster.report import single_camera_warning

    warning = single_camera_warning(summary)
    if warning:
        notice(warning)


def print_quality(quality: dict[str, Any]) -> None:
    """Label quality against ground truth, one metric a row (reported, never used by algorithms)."""
    from rich.table import Table

    table = Table(title="label quality (ground truth used for reporting only; rates in %)", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in quality.items():
        table.add_row(key, f"{100 * value:.2f} %" if isinstance(value, float) else str(value))
    out_console.print(table)
