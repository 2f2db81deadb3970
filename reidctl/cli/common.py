"""The Typer app and the helpers every command module shares."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from typer.core import TyperCommand, TyperGroup, TyperOption

from reidctl.cli.options import panel_rank
from reidctl.errors import ReidctlError
from reidctl.runtime import Runtime

try:  # Typer vendors Click since 0.2x; before, Typer ran on the click package
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException  # type: ignore[no-redef]

#: ``-h`` as well as ``--help``, in every command (a subcommand's context inherits it).
CONTEXT_SETTINGS = {"help_option_names": ["--help", "-h"]}


class _Tidy:
    """What every reidctl command's help and parsing share, applied where Click's commands are
    built (not in each declaration): options sorted into their help panels, help text taken
    literally (rich markup escaped: ``reidctl[faiss]`` stays), a boolean flag shown without a
    value placeholder, and a usage error ended in one ``error:`` line like every other error."""

    params: list[Any]
    help: str | None

    def tidy(self) -> None:
        self.params.sort(key=lambda p: panel_rank(getattr(p, "rich_help_panel", None)))  # stable
        for param in self.params:
            _tidy_param(param)
        if self.help:
            self.help = escape(self.help)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None and not getattr(option, "_reidctl_tidy", False):
            _tidy_param(option)
            option.default = False  # a bool needs no coercion: no pydantic import before the help prints
            panelled = [p for p in self.params if isinstance(p, TyperOption)]
            if panelled and all(p.rich_help_panel for p in panelled):  # no "Options" panel of --help alone
                option.rich_help_panel = panelled[-1].rich_help_panel
            option._reidctl_tidy = True
        return option


def _tidy_param(param: Any) -> None:
    if getattr(param, "help", None):
        param.help = escape(param.help)
    if getattr(param, "is_flag", False):
        param.metavar = ""  # a flag takes no value: no <bool> in its help row


class ReidctlCommand(_Tidy, TyperCommand):
    """Every reidctl command (see :class:`_Tidy`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tidy()


class ReidctlGroup(_Tidy, TyperGroup):
    """The ``reidctl`` group: Click's usage errors (an unknown option, a missing argument, a bad
    value) of the group and of every command end in one ``error:`` line and a hint, exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tidy()

    def make_context(self, info_name: str | None, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(info_name, *args, **kwargs)
        except ClickException as exc:  # UsageError, BadParameter, NoSuchOption ...
            raise usage_exit(exc, info_name or "reidctl") from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ClickException as exc:
            raise usage_exit(exc, " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))) from None


def usage_exit(exc: Exception, where: str) -> BaseException:
    """Print a Click error as the one ``error:`` line and a ``(see: reidctl CMD --help)`` hint
    (``where``: the command, when the error does not say); the exception to raise instead (the
    help that giving no arguments prints passes through)."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # the help is already printed
        return exc
    error(exc.format_message())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    err_console.print(f"(see: {ctx.command_path if ctx is not None else where} --help)", markup=False,
                      highlight=False, soft_wrap=True)
    return typer.Exit(code=getattr(exc, "exit_code", 2))


class ReidctlTyper(typer.Typer):
    """A Typer app whose commands are :class:`ReidctlCommand` unless they ask otherwise."""

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None,
                **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return super().command(name, cls=cls or ReidctlCommand, **kwargs)


def make_app() -> typer.Typer:
    """A fresh ``reidctl`` app without commands: the one below, and the stand-in that prints a
    command's help from the help manifest (:mod:`reidctl.cli.help`) — the same settings for both."""
    new = ReidctlTyper(
        name="reidctl",
        help="Unsupervised person re-identification: extract, cluster, refine, train — stage by stage.",  # = help.DESCRIPTION
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        cls=ReidctlGroup,
        context_settings=CONTEXT_SETTINGS,
    )
    new.callback()(_root)
    return new


def _print_version(value: bool) -> None:
    if value:
        from reidctl.version import __version__

        typer.echo(f"reidctl {__version__}")
        raise typer.Exit()


def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                       callback=_print_version)) -> None:
    """Unsupervised person re-identification: extract, cluster, refine, train — stage by stage."""


app = make_app()


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
    """``--quiet`` (a runtime option, :class:`reidctl.cli.options.CommandOptions`): taken out of the
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
    """A command's run options (:class:`reidctl.cli.options.CommandOptions`) as keyword arguments of a
    library call, without those it does not take (``json`` ...)."""
    return {k: v for k, v in run.items() if k not in drop}


def runtime_of(run: dict[str, Any]) -> Runtime:
    """The library's :class:`~reidctl.runtime.Runtime` from a command's run options (where a
    command spells the extraction batch ``--batch-size``, that is it)."""
    values = {f.name: run[f.name] for f in dataclasses.fields(Runtime) if f.name in run}
    if "batch_size" in run:
        values["extract_batch_size"] = run["batch_size"]
    return Runtime(**values)


def run_request(ctx: typer.Context, request: Any, runner: Callable[[Any, Any], Any], out: Any) -> Any:
    """Check that no model option the user gave is silently overridden by ``--checkpoint``
    (:meth:`ModelSpec.check_given <reidctl.models.spec.ModelSpec.check_given>`), then run."""
    request.model.check_given(given_options(ctx))
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


def warn_about_labels(summary: dict[str, Any]) -> None:
    """Print the warnings of :mod:`reidctl.cluster.report` about a labels report: one pseudo
    identity swallowing many people, none spanning two cameras."""
    from reidctl.cluster.report import merged_cluster_warning, single_camera_warning

    for warning in (merged_cluster_warning(summary), single_camera_warning(summary)):
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
