"""Options declared once, on the dataclasses that hold their defaults.

Every option of a stage (clustering, a method's refine step, its training, a prelude) is a field
of a dataclass whose default is the official value; its help text and command-line spelling sit
in the field's metadata, written with :func:`option`. A subclass may change a default with a plain
``iters: int = 400``: the help is looked up along the class hierarchy. Commands build their flags
from these declarations (:mod:`reidctl.cli.method_options`) and methods route a flat mapping of
given options to their stages (:func:`reidctl.methods.plan.route`), so no option is
spelled out twice.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from reidctl.errors import ReidctlError

KEY = "reidctl.option"


@dataclass(frozen=True)
class OptionInfo:
    """How a dataclass field appears as an option."""

    help: str
    flag: str | None = None  # default: --field-name
    aliases: tuple[str, ...] = ()  # other accepted spellings (--global-clustering for --algo)
    loop: bool = True  # False: `loop` supplies the value itself (the epoch, a prelude's output)
    off: str | None = None  # a boolean's "off" spelling (default: --no-<name>)
    unused: bool = False  # an inherited option this class does not use: no flag, refused when given
    path: bool = False  # a file or folder: a run's config.toml records it absolute (reidctl.pipeline.configfile)
    #: The sections that read a method-level switch (``Method.Switches``): NCPLR's
    #: ``global_local`` is read by the model, the clustering and the training, its ``lambda1`` by
    #: the clustering alone. A single-stage command refuses a switch its stage does not read.
    reads: tuple[str, ...] = ()


def option(help: str, *, flag: str | None = None, aliases: tuple[str, ...] = (), loop: bool = True,
           off: str | None = None, path: bool = False, reads: tuple[str, ...] = ()) -> dict[str, OptionInfo]:
    """Field metadata that makes a dataclass field an option: ``field(default=..., metadata=option("..."))``.

    ``off``: the spelling that sets a boolean to False, when ``--no-<name>`` reads badly
    (``--global-local/--global-only``)."""
    return {KEY: OptionInfo(help, flag, aliases, loop, off, path=path, reads=reads)}


def unused() -> dict[str, OptionInfo]:
    """Metadata for an inherited field that a subclass does not use (MAR has no ``iters``: its
    epoch is one pass over the source): it is no option of the subclass, so giving it is an
    error instead of a silent no-op."""
    return {KEY: OptionInfo("Not used by this method.", loop=False, unused=True)}


def flag_of(name: str) -> str:
    """The default command-line spelling of a field: ``num_instances`` → ``--num-instances``."""
    return "--" + name.replace("_", "-")


def option_info(cls: type, name: str) -> OptionInfo | None:
    """The :class:`OptionInfo` of field ``name``, from the nearest class that declared it with metadata."""
    klass = declaring_class(cls, name)
    return None if klass is None else klass.__dataclass_fields__[name].metadata[KEY]


def declaring_class(cls: type, name: str) -> type | None:
    """The nearest class of ``cls``'s hierarchy that declares field ``name`` as an option (where
    its help and spelling come from): where the option belongs, for its help panel."""
    for klass in cls.__mro__:
        fields = getattr(klass, "__dataclass_fields__", {})
        if name in fields and KEY in fields[name].metadata:
            return klass
    return None


def option_fields(cls: type) -> list[tuple[str, type, OptionInfo]]:
    """``(name, value type, info)`` of every option field of dataclass ``cls``, in declaration order
    (fields marked :func:`unused` left out).

    The value type is the annotation without ``Optional`` (``int | None`` → ``int``).
    """
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        info = option_info(cls, f.name)
        if info is not None and not info.unused:
            out.append((f.name, _plain_type(hints[f.name]), info))
    return out


def _plain_type(annotation: Any) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def resolve(cls: type, given: Mapping[str, Any] | None, *, what: str, base: Mapping[str, Any] | None = None,
            prefix: str = "") -> Any:
    """An instance of dataclass ``cls``: its defaults, then ``base`` (known names only), then the
    ``given`` values that are not None. A given name ``cls`` lacks is a user error naming ``what``
    (e.g. "--method cc"); a number that is NaN or infinite is one too (:func:`check_finite`);
    then ``check()`` runs when the class has one. ``prefix``: how the options are spelled where
    they are a prelude's (``pretrain_`` → ``--pretrain-lr``), for the messages."""
    names = resolve_names(cls, given or {}, what=what)
    values = {k: v for k, v in (base or {}).items() if k in names}
    values.update({k: v for k, v in (given or {}).items() if v is not None})
    obj = cls(**values)
    check_finite(obj, prefix)
    if hasattr(obj, "check"):
        obj.check()
    return obj


def check_finite(obj: Any, prefix: str = "") -> None:
    """Refuse a NaN or infinite number in any field of dataclass ``obj``, in one line.

    Why here, for every option at once: a range check such as ``lr <= 0`` lets NaN through (every
    comparison with NaN is false), and a loop would then extract, cluster and refine before the
    optimiser or a diverged loss stopped it. Resolving happens before any stage runs."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            info = option_info(type(obj), f.name)
            flag = (info.flag if info is not None and info.flag and not prefix else None) or flag_of(prefix + f.name)
            raise ReidctlError(f"{flag} {value}: must be a finite number")


def resolve_names(cls: type, given: Mapping[str, Any], *, what: str) -> set[str]:
    """The field names of dataclass ``cls`` (those marked :func:`unused` left out); a name in
    ``given`` it lacks is a user error naming ``what``."""
    names = {f.name for f in dataclasses.fields(cls) if not getattr(option_info(cls, f.name), "unused", False)}
    bad = [k for k in given if k not in names]
    if bad:
        raise not_applicable(bad, what)
    return names


def reads(cls: type, name: str, stage: str) -> bool:
    """Whether ``stage`` reads option ``name`` of dataclass ``cls`` (by default, the stage of the
    dataclass declaring it does; a switch's ``reads`` names the sections)."""
    info = option_info(cls, name)
    return info is None or not info.reads or stage in info.reads


def read_elsewhere(cls: type, given: Mapping[str, Any], stage: str, command: str) -> None:
    """Refuse the options of dataclass ``cls`` in ``given`` that ``stage`` does not read (their
    ``reads`` names other stages), naming the stage that does: a flag that changes nothing in
    ``command`` is an error, not a silent no-op."""
    for name in given:
        if not reads(cls, name, stage):
            info = option_info(cls, name)
            stages = " and ".join(info.reads)
            raise ReidctlError(f"{info.flag or flag_of(name)} is read by the {stages} stage, not by {command}: give it "
                               f"to `reidctl loop`, which runs the {stages} stage")


def not_applicable(keys: list[str], what: str, note: str = "") -> ReidctlError:
    """The one user error for options that do not apply: "--beta does not apply to --method cc"."""
    verb = "does" if len(keys) == 1 else "do"
    return ReidctlError(f"{', '.join(flag_of(k) for k in keys)} {verb} not apply to {what}{note}")
