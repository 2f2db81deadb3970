"""Command-line flags made from the options' declarations (:mod:`reidctl.options`).

Each option is declared once, on the dataclass that holds its default (``ClusterParams``, a
method's ``Params`` and ``RefineOptions``, a prelude's ``Options``). :func:`with_options` adds
the flags of a command to a Typer function and hands the function the given ones as one
``options`` mapping (flat names, unset options left out), which the library routes to stages.
A flag is always optional here (unset = the method's default, or a checkpoint's value), and a
boolean is a ``--name/--no-name`` pair.

Each flag's help panel follows from where it is declared: the model's options under "Model", the
clustering's under "Clustering", a training option every method shares under "Training", and an
option that only one method family declares in its own package (or a method's prelude) under
"Method: NAME" (:attr:`Flag.panel`), so every command that has a flag shows it in the same panel.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterable, Optional

import typer

from reidctl.cli.options import CLUSTERING, METHOD, MODEL, RUNTIME, TRAINING, CommandOptions, method_panel
from reidctl.cluster.clustering import ClusterParams
from reidctl.methods import METHODS, Method
from reidctl.models.spec import ModelSpec
from reidctl.options import OptionInfo, declaring_class, flag_of, option_fields
from reidctl.methods.prelude import Prelude
from reidctl.runtime import Runtime


@dataclass
class Flag:
    """One option of a command: its Python name, type, spellings and per-method defaults."""

    key: str
    type: type
    info: OptionInfo
    name: str  # the field's name (``epochs`` for ``intra_epochs``)
    prefix: str = ""
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)  # method (or "") → default
    plain: bool = False  # a flag with its default value (not "unset"), a boolean a single switch
    stage_panel: str | None = None  # its panel when no one method family owns it
    #: method → its package (:func:`_home`) where it declares the flag there, else None
    own: dict[str, str | None] = dataclasses.field(default_factory=dict)

    @property
    def panel(self) -> str | None:
        """"Method: NAME" when the methods that have the flag are one family (one package) that
        declares it, else the panel of its stage (:data:`reidctl.cli.options.PANELS`): an option
        that several methods declare, each with its own default (``--lr``), is a training option."""
        homes = set(self.own.values())
        if len(homes) == 1 and None not in homes:
            return method_panel(list(self.own))
        return self.stage_panel

    def flags(self) -> str | tuple[str, ...]:
        main = flag_of(self.key) if self.prefix or self.info.flag is None else self.info.flag
        if self.plain:
            return (main, *self.info.aliases)
        if self.type is bool:
            return (f"{main}/{self.info.off or '--no-' + main[2:]}",)
        return (main, *self.info.aliases)

    def help(self) -> str:
        return self.info.help if self.plain else f"{self.info.help} {default_text(self.defaults)}".strip()

    def parameter(self) -> inspect.Parameter:
        typ = self.type if self.plain else Optional[self.type]
        annotation = Annotated[typ, typer.Option(*self.flags(), help=self.help(), rich_help_panel=self.panel)]
        return inspect.Parameter(self.key, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 default=self.defaults[""] if self.plain else None, annotation=annotation)


def default_text(defaults: dict[str, Any]) -> str:
    """"(0.6)" when every method has the same default, else "(cc 0.6, pplr 0.5)"; unset ones left out."""
    shown = {m: v for m, v in defaults.items() if v is not None}
    if not shown:
        return ""
    values = list(shown.values())
    if all(v == values[0] for v in values) and len(shown) == len(defaults):
        return f"({_value(values[0])})"
    return "(" + ", ".join(f"{m} {_value(v)}" for m, v in shown.items()) + ")"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def _collect(table: dict[str, Flag], cls: type, owner: str, *, panel: str, method: type[Method] | None = None,
             prefix: str = "", loop: bool = False, instance: Any = None, skip: Iterable[str] = ()) -> None:
    """Add the option fields of dataclass ``cls`` to ``table``, noting ``owner``'s default; the
    flags of a ``method``'s own options go to its panel, the others to ``panel``. A prelude's
    options (``prefix``) are its method's."""
    defaults = instance if instance is not None else cls()
    for name, typ, info in option_fields(cls):
        if name in skip or (loop and not info.loop):
            continue
        key = f"{prefix}_{name}" if prefix else name
        flag = table.setdefault(key, Flag(key, typ, info, name, prefix, stage_panel=panel))
        if flag.type is not typ:
            raise TypeError(f"option {key} is declared as {flag.type.__name__} and as {typ.__name__}")
        flag.defaults[owner] = defaults[name] if isinstance(defaults, dict) else getattr(defaults, name)
        if method is not None:
            home = _home(method)
            flag.own[owner] = home if prefix or _in_package(declaring_class(cls, name), home) else None


def _home(method: type[Method]) -> str:
    """The package that holds ``method`` alone: its module's package (``reidctl.methods.ncplr``),
    or the module itself where that package holds every method (``reidctl.methods.cc``)."""
    package = method.__module__.rpartition(".")[0]
    return method.__module__ if package == Method.__module__.rpartition(".")[0] else package


def _in_package(cls: type | None, package: str) -> bool:
    module = getattr(cls, "__module__", "")
    return module == package or module.startswith(package + ".")


def _cluster_defaults(method: type[Method]) -> dict[str, Any]:
    return dataclasses.asdict(ClusterParams(**method.cluster_defaults))


def cluster_flags() -> list[Flag]:
    table: dict[str, Flag] = {}
    _collect(table, ClusterParams, "", panel=CLUSTERING)
    return list(table.values())


def refine_flags() -> list[Flag]:
    """`refine`: the clustering (when it clusters itself) and every method's refine options."""
    table: dict[str, Flag] = {}
    clustering = [m for m in METHODS.values() if m.clusters]
    for m in clustering:
        _collect(table, ClusterParams, m.name, panel=CLUSTERING, instance=_cluster_defaults(m))
    for m in METHODS.values():
        _collect(table, m.Switches, m.name, panel=METHOD, method=m)
        _collect(table, m.RefineOptions, m.name, panel=METHOD, method=m)
    return list(table.values())


def train_flags() -> list[Flag]:
    """`train-epoch`: every method's switches, training and labelled source options."""
    table: dict[str, Flag] = {}
    for m in METHODS.values():
        _collect(table, m.Switches, m.name, panel=METHOD, method=m)
        _collect(table, m.Params, m.name, panel=TRAINING, method=m)
        _collect(table, m.Source, m.name, panel=TRAINING, method=m)
    return list(table.values())


def loop_flags() -> list[Flag]:
    """`loop`: clustering, refine options the loop does not supply itself, a prelude's ready-made
    output (``--<feeds> FILE``), training, and each prelude's options as ``--<prelude>-<option>``."""
    table: dict[str, Flag] = {}
    clustering = [m for m in METHODS.values() if m.clusters]
    for m in clustering:
        _collect(table, ClusterParams, m.name, panel=CLUSTERING, instance=_cluster_defaults(m))
    for m in clustering:
        fed = {p.feeds for p in m.preludes}
        _collect(table, m.RefineOptions, m.name, panel=METHOD, method=m, loop=True, skip=fed)
        for p in m.preludes:
            table.setdefault(p.feeds, Flag(p.feeds, str, OptionInfo(
                f"{m.name}: use this file instead of running the {p.name} stage ({p.help})."), p.feeds,
                stage_panel=METHOD, own={m.name: _home(m)}))
    for m in METHODS.values():
        _collect(table, m.Switches, m.name, panel=METHOD, method=m)
        _collect(table, m.Params, m.name, panel=TRAINING, method=m)
        _collect(table, m.Source, m.name, panel=TRAINING, method=m)
    for m in METHODS.values():
        for p in m.preludes:
            _collect(table, p.Options, m.name, panel=METHOD, method=m, prefix=p.name, loop=True)
    return list(table.values())


def model_flags(*, by_method: bool = False) -> list[Flag]:
    """The options of a fresh model (``ModelSpec``); ``by_method``: unset pooling and parts take
    the method's official values (``Method.model_defaults``), shown per method."""
    table: dict[str, Flag] = {}
    if by_method:
        for m in METHODS.values():
            _collect(table, ModelSpec, m.name, panel=MODEL,
                     instance={**dataclasses.asdict(ModelSpec()), **m.model_defaults})
    else:
        _collect(table, ModelSpec, "", panel=MODEL)
    return list(table.values())


def run_default_text(name: str) -> str:
    """Each method's official ``epochs`` or ``eval_every`` for a help text: "(cc 50, pplr 50, ...)"."""
    return default_text({m.name: getattr(m.run_defaults, name) for m in METHODS.values()})


def runtime_flags(*names: str) -> list[Flag]:
    """Options of how a command runs (:class:`reidctl.runtime.Runtime` and the command line's own
    :class:`reidctl.cli.options.CommandOptions`), in the order named."""
    table: dict[str, Flag] = {}
    _collect(table, Runtime, "", panel=RUNTIME)
    _collect(table, CommandOptions, "", panel=RUNTIME)
    for flag in table.values():
        flag.plain = True
    return [table[n] for n in names]


def prelude_flags(prelude: Prelude) -> list[Flag]:
    """A prelude run on its own (`intra-camera`): its options without prefix."""
    table: dict[str, Flag] = {}
    _collect(table, prelude.Options, "", panel=TRAINING)
    return list(table.values())


def with_options(**groups: list[Flag]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add each group of flags to a command function in place of its parameter of that name
    (``options=train_flags()`` replaces ``options``); the function receives, under that name,
    ``{key: value}`` for the group's flags that were given (plain flags: always, their defaults
    included, None meaning "the library decides")."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func, eval_str=True)
        params = list(sig.parameters.values())
        taken = {p.name for p in params} - set(groups)
        clash = [f.key for flags in groups.values() for f in flags if f.key in taken]
        if clash:
            raise TypeError(f"{func.__name__}: options {clash} clash with the command's own parameters")
        new: list[inspect.Parameter] = []
        for p in params:
            new += [f.parameter() for f in groups[p.name]] if p.name in groups else [p]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for into, flags in groups.items():
                values = [(f, kwargs.pop(f.key)) for f in flags]
                kwargs[into] = {f.key: v for f, v in values if f.plain or v is not None}
            return func(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=new)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in new}
        del wrapper.__wrapped__  # Typer must read the new signature, not the wrapped one's
        return wrapper

    return decorate


def pretrain_flags() -> list[Flag]:
    """`pretrain`: the source pretraining's options (those that apply to it)."""
    from reidctl.methods.mar.pretrain import PretrainParams

    table: dict[str, Flag] = {}
    _collect(table, PretrainParams, "", panel=TRAINING, loop=True)
    return list(table.values())


def mar_model_flags() -> list[Flag]:
    """The model options with MAR's official values as defaults (what `pretrain` builds)."""
    from reidctl.methods.mar import MAR

    table: dict[str, Flag] = {}
    _collect(table, ModelSpec, "", panel=MODEL, instance={**dataclasses.asdict(ModelSpec()), **MAR.model_defaults})
    return list(table.values())
