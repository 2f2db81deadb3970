"""A method's options resolved once into what each of its stages runs: the :class:`Plan`.

``loop`` takes one flat mapping of options (``eps``, ``iters``, ``beta``, ``intra_epochs``,
``intra`` ...); :func:`make_plan` (``Method.plan``) routes each to its section of the method's
options tree (the method-level ``Switches``, the clustering, refine, training, the labelled
``Source`` and each prelude),
fills in the method's official values under the switches, checks everything, and returns typed
settings: the switches, the clustering (a :class:`~reidctl.cluster.clustering.ClusterParams`,
or None for a method that does not cluster), the refine options, the training parameters, each
prelude's options, and the files the user handed in place of a prelude; :meth:`Plan.model`
gives a fresh model's settings. The loop and the single-stage commands (``refine``,
``train-epoch``: ``stage=``) consume it; a single-stage command refuses a switch its stage does
not read, naming the stage that does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from reidctl.cluster.clustering import ClusterParams
from reidctl.errors import ReidctlError
from reidctl.methods.registry import METHODS
from reidctl.train.bn_chunks import check_bn_chunks
from reidctl.options import flag_of, not_applicable, option_fields, read_elsewhere, reads, resolve

if TYPE_CHECKING:
    from reidctl.methods.base import Method
    from reidctl.methods.prelude import Prelude
    from reidctl.train.contract import TrainParams


#: The commands that run one stage of a method, by the stage; ``loop`` runs them all.
STAGE_COMMANDS = {"refine": "`refine`", "train": "`train-epoch`"}
#: The section a single-stage command needs a switch to be read by: ``refine`` clusters (when it
#: is given no labels), ``train-epoch`` trains.
_SWITCH_READER = {"refine": "cluster", "train": "train"}
#: The model settings a method may set its own default for (CC's values).
MODEL_BASE: dict[str, Any] = {"pooling": "gem", "parts": 0, "height": 256, "width": 128, "last_stride": 1,
                              "neck": "bn", "last_relu": True, "input_norm": "imagenet"}


@dataclass(frozen=True)
class Plan:
    """What a method's options resolved to, validated once, for every stage it runs."""

    method: type[Method]
    #: The method-level switches (``Method.Switches``), resolved: what the sections below follow.
    switches: Any
    #: The clustering (the method's official values, the user's on top); None: it does not
    #: cluster, or the plan is ``train-epoch``'s.
    cluster: ClusterParams | None
    #: The refine options the user gave (the stage fills in the method's defaults, and ``loop``
    #: the epoch where the method reads it); checked when the plan is made.
    refine: dict[str, Any]
    #: The training parameters, resolved (the method's defaults, the switches and the user's on
    #: top); None in ``refine``'s plan.
    train: TrainParams | None
    #: The training options the user gave, with the given switches training reads (a
    #: checkpoint's values come between the defaults and these when an epoch resumes one).
    train_given: dict[str, Any]
    #: Each prelude's resolved options (None: a file given in its place).
    preludes: dict[str, Any] = field(default_factory=dict)
    #: Files given in place of a prelude, by the option they feed (``intra``, ``checkpoint``).
    given: dict[str, str] = field(default_factory=dict)
    #: The options the user gave that only the clustering reads (its own, and switches such as
    #: ``lambda1``): ``refine`` refuses them with a labels file, which is already clustered.
    cluster_given: tuple[str, ...] = ()
    #: The labelled source section (``--aux-data`` ...), resolved; ``source.given``: a source is
    #: trained beside the target (a method that ``learns_source``, MAR, reads it as training options).
    source: Any = None
    #: The source options the user gave (a checkpoint's come between the defaults and these).
    source_given: dict[str, Any] = field(default_factory=dict)

    def train_options(self) -> dict[str, Any]:
        """What the train stage takes as given options: the training's and the source's."""
        return {**self.train_given, **self.source_given}

    def model(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The model settings of a fresh model: :func:`model_settings` under this plan's switches."""
        return model_settings(self.method, given, self.switches)


def model_settings(method: type[Method], given: Mapping[str, Any], switches: Any = None) -> dict[str, Any]:
    """Pooling, parts, input size ...: as ``given`` (None: not given), else the method's official
    value under ``switches`` (None: the method's default switches), else CC's."""
    base = {**MODEL_BASE, **method.official_model(method.Switches() if switches is None else switches)}
    return {k: base[k] if given.get(k) is None else given[k] for k in MODEL_BASE}


def switches_of(method: type[Method], options: Mapping[str, Any]) -> Any:
    """The method's switches resolved from a flat mapping of options (the others ignored): what a
    command needs before it makes the plan, to fill in a fresh model's official settings."""
    names = field_names(method.Switches)
    return resolve(method.Switches, {k: v for k, v in options.items() if k in names}, what=f"--method {method.name}")


def cluster_params(method: type[Method], switches: Any = None, *, n_samples: int | None = None,
                   sized_later: bool = False, **given: Any) -> ClusterParams:
    """The clustering ``method``'s official command runs under ``switches`` (None: the method's
    default switches; NCPLR's branch mixture follows ``--global-local``), with the ``given``
    clustering options on top (None: not given), checked. With ``n_samples``, sized for that
    many rows (:func:`sized_clustering`); ``sized_later``: not checked yet, as what depends on N
    is not filled in (``refine`` sizes it once it has read the features)."""
    values = dict(method.official_clustering(method.Switches() if switches is None else switches))
    values.update({k: v for k, v in given.items() if v is not None})
    params = ClusterParams(**values)
    if n_samples is not None:
        return sized_clustering(method, params, n_samples)
    if not sized_later:
        params.check()
    return params


def sized_clustering(method: type[Method], params: ClusterParams, n_samples: int) -> ClusterParams:
    """``params`` on ``n_samples`` rows: the method fills in what depends on N (icrefine's number
    of clusters), and the algorithm is checked to fit in memory, before any expensive stage runs."""
    params = method.resolve_clustering(params, n_samples)
    params.algorithm.check_fits(n_samples, params)
    params.check()
    return params


def refine_options(method: type[Method], options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``refine`` step's options with the method's defaults filled in and checked; options of
    another method are a user error."""
    return dataclasses.asdict(resolve(method.RefineOptions, options, what=f"`refine --method {method.name}`"))


def make_plan(method: type[Method], options: Mapping[str, Any], *, stage: str | None = None,
              n_samples: int | None = None, context: Mapping[str, Any] | None = None,
              checkpoint: str | None = None) -> Plan:
    """Resolve the flat ``options`` of a ``loop`` of ``method`` on ``n_samples`` train images, or
    of the single-stage command running ``stage`` (``refine``, ``train``).

    ``context``: the loop's own values that a method's training follows unless given (MAR's
    schedule length follows ``epochs``); ``checkpoint``: the file epoch 0 starts from, which
    replaces a prelude that makes the starting model. An option no stage of the method reads,
    an option the single stage does not read, another method's option, and every bad value are
    refused here, in one line."""
    routed = route(method, options, stage=stage)
    if stage is not None:
        read_elsewhere(method.Switches, routed.switches, _SWITCH_READER[stage], STAGE_COMMANDS[stage])
    switches = resolve(method.Switches, routed.switches, what=f"--method {method.name}")
    source = resolve(method.Source, routed.source, what=f"--method {method.name}")
    if stage is None:
        refuse_source_options(method, routed.source, source)
    read = _training_reads(method)
    given_train = {**{k: v for k, v in {**routed.switches, **routed.source}.items() if k in read}, **routed.train}
    if stage is None:
        for name, value in method.train_context.items():
            given_train.setdefault(name, (context or {})[value])
    train = None
    if stage != "refine":
        handed = {k: getattr(sec, k) for sec in (switches, source) for k in field_names(type(sec)) if k in read}
        train = method.resolve_params(None, {**handed, **given_train})
        if source.given and not method.learns_source:  # its batch is BatchNorm-chunked as the target's
            check_bn_chunks(source.aux_batch, train.bn_chunks)
    cluster = None
    if method.clusters and stage != "train":
        cluster = cluster_params(method, switches, n_samples=n_samples, sized_later=stage == "refine",
                                 **routed.cluster)
        if n_samples is not None and n_samples <= cluster.k1:
            raise ReidctlError(f"{n_samples} train images are too few for --k1 {cluster.k1} "
                               "(clustering needs more images than k1)")
    if stage != "train" and (method.clusters or stage == "refine"):
        refine_options(method, routed.refine)  # another method's options fail before any work
    given = dict(routed.given)
    for p in method.preludes:
        if p.starts_model and checkpoint is not None:
            given[p.feeds] = str(checkpoint)
    preludes = {} if stage is not None else {
        p.name: _prelude_options(p, routed.preludes.get(p.name, {}), given_train, given) for p in method.preludes}
    cluster_given = (*routed.cluster, *(k for k in routed.switches if reads(method.Switches, k, "cluster")))
    return Plan(method, switches, cluster, dict(routed.refine), train, given_train, preludes, given, cluster_given,
                source, dict(routed.source))


def refuse_source_options(method: type[Method], given: Mapping[str, Any], source: Any) -> None:
    """Refuse source options (``--aux-weight`` ...) given without a source to train beside the
    target: they would change nothing."""
    if given and not source.given and not method.learns_source:
        flags = ", ".join(flag_of(k) for k in given)
        raise ReidctlError(f"{flags} set how a labelled source is trained beside the target: give it with --aux-data")


def _training_reads(method: type[Method]) -> set[str]:
    """The switches and source options that training reads as parameters of its own name: a
    switch whose ``reads`` names the training (NCPLR's ``global_local``), a source option that
    is a field of ``Params`` (MAR's ``aux_data``, which it trains on itself)."""
    params = {f.name for f in dataclasses.fields(method.Params)}
    switches = {k for k in field_names(method.Switches) if reads(method.Switches, k, "train")}
    return (switches | field_names(method.Source)) & params


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
    """A flat mapping of given options, split by the section each one belongs to."""

    switches: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)
    refine: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    preludes: dict[str, dict[str, Any]] = field(default_factory=dict)  # prelude name → its options
    given: dict[str, str] = field(default_factory=dict)  # prelude name → a ready-made output file


def route(method: type[Method], options: Mapping[str, Any], *, stage: str | None = None) -> Routed:
    """Split a flat mapping of given options (``None`` = not given) by section, as ``loop`` takes
    them (``stage``: as the command running that one stage does): switches, clustering, refine,
    training, each prelude's (``<prelude>_<option>``) and ready-made prelude outputs (``<feeds>``).

    An option that belongs to no section of this method is a user error naming it."""
    routed = Routed()
    section_of = option_stages(method, stage=stage)
    bad = []
    for key, value in options.items():
        if value is None:
            continue
        if key not in section_of:
            bad.append(key)
            continue
        section, name = section_of[key]
        if section in ("switches", "source", "cluster", "refine", "train"):
            getattr(routed, section)[name] = value
        elif section == "given":
            routed.given[name] = str(value)
        else:
            routed.preludes.setdefault(section, {})[name] = value
    if bad:
        raise not_applicable(bad, f"--method {method.name}", owners(bad, lambda m: option_stages(m, stage=stage)))
    return routed


def option_stages(method: type[Method], *, stage: str | None = None) -> dict[str, tuple[str, str]]:
    """Option key → (section, field) for every option ``method`` takes in ``loop`` (``stage``:
    in the command running that one stage)."""
    loop = stage is None
    sections: dict[str, tuple[str, str]] = {n: ("switches", n) for n, _, _ in option_fields(method.Switches)}
    if method.clusters and stage != "train":
        sections.update({n: ("cluster", n) for n, _, _ in option_fields(ClusterParams)})
    if (method.clusters and loop) or stage == "refine":  # a method that does not cluster has no refine stage in `loop`
        fed = {p.feeds: p.name for p in method.preludes}
        for n, _, info in option_fields(method.RefineOptions):
            if loop and n in fed:
                sections[n] = ("given", fed[n])
            elif info.loop or not loop:
                sections[n] = ("refine", n)
    if stage != "refine":  # `refine` takes no training options (a name both have, as MAR's --scale, is refine's there)
        sections.update({n: ("train", n) for n, _, _ in option_fields(method.Params)})
        sections.update({n: ("source", n) for n, _, _ in option_fields(method.Source)})
    if loop:
        for p in method.preludes:
            sections.update({f"{p.name}_{n}": (p.name, n) for n, _, info in option_fields(p.Options) if info.loop})
    return sections


def field_names(cls: type) -> set[str]:
    """The option names of an options dataclass (inherited fields it marks unused left out)."""
    return {name for name, _, _ in option_fields(cls)}


def owners(keys: list[str], options_of: Callable[[type[Method]], Iterable[str]]) -> str:
    """" (an option of icrefine)" for options another registered method takes, else ""."""
    names = sorted(m.name for m in METHODS.values() if not set(keys).isdisjoint(options_of(m)))
    return f" (an option of {', '.join(names)})" if names else ""
