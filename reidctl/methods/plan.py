"""A method's options resolved once into what each of its stages runs: the :class:`Plan`.

``loop`` takes one flat mapping of options (``eps``, ``iters``, ``beta``, ``intra_epochs``,
``intra`` ...); :func:`make_plan` (``Method.plan``) routes each to the stage that reads it,
fills in the method's official values, checks everything, and returns typed settings: the
clustering (a :class:`~reidctl.cluster.clustering.ClusterParams`, or None for a method that
does not cluster), the refine options, the training parameters, each prelude's options, and
the files the user handed in place of a prelude. The loop and the single-stage commands consume
it; nothing downstream routes or resolves an option again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from reidctl.cluster.clustering import ClusterParams
from reidctl.errors import ReidctlError
from reidctl.methods.registry import METHODS
from reidctl.options import flag_of, not_applicable, option_fields, reads

if TYPE_CHECKING:
    from reidctl.methods.base import Method
    from reidctl.methods.prelude import Prelude
    from reidctl.train.contract import TrainParams


@dataclass(frozen=True)
class Plan:
    """What a method's options resolved to, validated once, for every stage it runs."""

    method: type[Method]
    #: The clustering (the method's official values, the user's on top); None: it does not cluster.
    cluster: ClusterParams | None
    #: The refine options the user gave (the stage fills in the method's defaults, and ``loop``
    #: the epoch where the method reads it); checked when the plan is made.
    refine: dict[str, Any]
    #: The training parameters, resolved (the method's defaults, the user's on top).
    train: TrainParams
    #: The training options the user gave that training reads (a checkpoint's values come
    #: between the defaults and these when an epoch resumes one).
    train_given: dict[str, Any]
    #: Each prelude's resolved options (None: a file given in its place).
    preludes: dict[str, Any] = field(default_factory=dict)
    #: Files given in place of a prelude, by the option they feed (``intra``, ``checkpoint``).
    given: dict[str, str] = field(default_factory=dict)


def cluster_params(method: type[Method], options: Mapping[str, Any] | None = None, *, n_samples: int | None = None,
                   **given: Any) -> ClusterParams:
    """The clustering ``method``'s official command runs, with the ``given`` clustering options
    on top (None: not given).

    ``options``: the flat options of the command, from which a method may derive its official
    clustering (NCPLR's branch mixture with ``--global-local``). With ``n_samples`` the method
    fills in what depends on N (icrefine's number of clusters), and the algorithm is checked to
    fit in memory, before any expensive stage runs.
    """
    values = dict(method.official_clustering(options or {}))
    values.update({k: v for k, v in given.items() if v is not None})
    params = ClusterParams(**values)
    if n_samples is not None:
        params = method.resolve_clustering(params, n_samples)
        params.algorithm.check_fits(n_samples, params)
    params.check()
    return params


def make_plan(method: type[Method], options: Mapping[str, Any], *, n_samples: int | None = None,
              context: Mapping[str, Any] | None = None, checkpoint: str | None = None) -> Plan:
    """Resolve the flat ``options`` of a ``loop`` of ``method`` on ``n_samples`` train images.

    ``context``: the loop's own values that a method's training follows unless given (MAR's
    schedule length follows ``epochs``); ``checkpoint``: the file epoch 0 starts from, which
    replaces a prelude that makes the starting model. An option no stage of the method reads,
    another method's option, and every bad value are refused here, in one line."""
    routed = route(method, options)
    for name, value in method.train_context.items():
        routed.train.setdefault(name, (context or {})[value])
    train = method.resolve_params(None, routed.train)
    cluster = None
    if method.clusters:
        cluster = cluster_params(method, options, n_samples=n_samples, **routed.cluster)
        method.refine_options(routed.refine)  # another method's options fail before any work
        if n_samples is not None and n_samples <= cluster.k1:
            raise ReidctlError(f"{n_samples} train images are too few for --k1 {cluster.k1} "
                               "(clustering needs more images than k1)")
    given = dict(routed.given)
    for p in method.preludes:
        if p.starts_model and checkpoint is not None:
            given[p.feeds] = str(checkpoint)
    preludes = {p.name: _prelude_options(p, routed.preludes.get(p.name, {}), routed.train, given)
                for p in method.preludes}
    return Plan(method, cluster, dict(routed.refine), train, read_by_training(method, routed.train), preludes, given)


def _prelude_options(prelude: Prelude, options: Mapping[str, Any], train: Mapping[str, Any],
                     given: Mapping[str, str]) -> Any:
    """A prelude's resolved options; None when a file is given in its place (then its options
    are refused: they would change nothing)."""
    if prelude.feeds in given:
        if options:
            flags = ", ".join(flag_of(f"{prelude.name}_{k}") for k in options)
            raise ReidctlError(f"{flag_of(prelude.feeds)} FILE replaces the {prelude.name} stage, so {flags} "
                               "do not apply with it")
        return None
    return prelude.resolve(options, train)


@dataclass
class Routed:
    """A flat mapping of given options, split by the stage each one belongs to."""

    cluster: dict[str, Any] = field(default_factory=dict)
    refine: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    preludes: dict[str, dict[str, Any]] = field(default_factory=dict)  # prelude name → its options
    given: dict[str, str] = field(default_factory=dict)  # prelude name → a ready-made output file


def route(method: type[Method], options: Mapping[str, Any], *, loop: bool = True) -> Routed:
    """Split a flat mapping of given options (``None`` = not given) by stage, as ``loop`` takes
    them (``loop=False``: as ``refine`` does): clustering, refine, training, each prelude's
    (``<prelude>_<option>``) and ready-made prelude outputs (``<feeds>``).

    An option that belongs to no stage of this method is a user error naming it."""
    routed = Routed()
    stage_of = option_stages(method, loop=loop)
    bad = []
    for key, value in options.items():
        if value is None:
            continue
        if key not in stage_of:
            bad.append(key)
            continue
        stage, name = stage_of[key]
        if stage in ("cluster", "refine", "train"):
            getattr(routed, stage)[name] = value
        elif stage == "given":
            routed.given[name] = str(value)
        else:
            routed.preludes.setdefault(stage, {})[name] = value
    if bad:
        raise not_applicable(bad, f"--method {method.name}", owners(bad, lambda m: option_stages(m, loop=loop)))
    return routed


def option_stages(method: type[Method], *, loop: bool = True) -> dict[str, tuple[str, str]]:
    """Option key → (stage, field) for every option ``method`` takes (in ``loop`` or not)."""
    stages: dict[str, tuple[str, str]] = {}
    if method.clusters:
        stages.update({n: ("cluster", n) for n, _, _ in option_fields(ClusterParams)})
    if method.clusters or not loop:  # a method that does not cluster has no refine stage in `loop`
        fed = {p.feeds: p.name for p in method.preludes}
        for n, _, info in option_fields(method.RefineOptions):
            if loop and n in fed:
                stages[n] = ("given", fed[n])
            elif info.loop or not loop:
                stages[n] = ("refine", n)
    if loop:  # `refine` takes no training options (a name both have, as MAR's --scale, is refine's there)
        stages.update({n: ("train", n) for n, _, _ in option_fields(method.Params)})
        for p in method.preludes:
            stages.update({f"{p.name}_{n}": (p.name, n) for n, _, info in option_fields(p.Options) if info.loop})
    return stages


def read_by_training(method: type[Method], options: Mapping[str, Any]) -> dict[str, Any]:
    """The training options that training reads (``loop`` routes an option such as NCPLR's
    ``lambda1``, declared with the training's but read by the clustering, to both)."""
    return {k: v for k, v in options.items() if reads(method.Params, k, "train")}


def field_names(cls: type) -> set[str]:
    """The option names of an options dataclass (inherited fields it marks unused left out)."""
    return {name for name, _, _ in option_fields(cls)}


def owners(keys: list[str], options_of: Callable[[type[Method]], Iterable[str]]) -> str:
    """" (an option of icrefine)" for options another registered method takes, else ""."""
    names = sorted(m.name for m in METHODS.values() if not set(keys).isdisjoint(options_of(m)))
    return f" (an option of {', '.join(names)})" if names else ""
