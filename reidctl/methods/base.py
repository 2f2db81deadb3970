"""A method: what it trains (:class:`~reidctl.train.contract.TrainingMethod`, the trainer's
contract) and the stages it owns around training.

Beyond the training hooks, a method declares

* its options tree, dataclasses whose defaults are the official command's: ``Switches`` (the
  method-level switches that choose a variant, read by several sections), ``Params`` (the
  training, extends ``TrainParams``), ``RefineOptions`` (its ``refine`` step) and each prelude's
  ``Options``, beside the shared ``ClusterParams`` and ``ModelSpec``; each field's help is
  written once with :func:`reidctl.options.option`. :meth:`Method.plan` resolves them once
  (:mod:`reidctl.methods.plan`);
* its clustering: ``clusters`` (False: ``loop`` neither clusters nor refines, and the trainer
  sees every train row), ``cluster_defaults`` (the official values that differ from CC's,
  including the feature ``branches`` the distance mixes) and ``resolve_clustering``;
* ``refine(features, labels, extra, options, seed=)``: clustering labels → refined labels,
  with ``refine_context`` naming what it reads from the loop (the epoch, the number of epochs);
* ``preludes``: stages run once before epoch 0 (:class:`reidctl.methods.prelude.Prelude`);
* ``model_defaults``: the official model settings that differ from CC's;
* ``run_defaults``: how many epochs the official command trains and how often it evaluates.

Together with the options tree these are the method's official command, in one
place per method; ``reidctl loop --method NAME --dry-run`` prints what they resolve to, and
``docs/methods.md`` sets them beside the official scripts' values (checked by
``tests/test_official_defaults.py``).

Adding a method is one package under ``reidctl/methods/`` and one line in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np

from reidctl.methods.plan import make_plan
from reidctl.methods.prelude import Prelude
from reidctl.train.contract import Batch, EpochData, TrainingMethod, TrainParams

__all__ = ["Batch", "EpochData", "Method", "NoOptions", "PairArray", "Refined", "RunDefaults", "TrainParams",
           "TrainingMethod"]


@dataclass
class Refined:
    """What a method's ``refine`` returns: labels (-1 = outlier/discarded) and what to store."""

    labels: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)  # arrays for labels.h5 (per-row matrices ...)
    summary: dict[str, Any] = field(default_factory=dict)  # numbers for the stage's report
    options: dict[str, Any] = field(default_factory=dict)  # the resolved refinement options
    attrs: dict[str, Any] = field(default_factory=dict)  # extra root attributes of labels.h5
    #: Row pairs the method claims show one person (MAR's agreement pairs): reported against
    #: ground truth by ``run_refine`` when it is known, never stored as labels.
    pairs: np.ndarray | None = None


@dataclass(frozen=True)
class PairArray:
    """A persistent array of pairs of train rows a method claims show one person (MAR's mined
    positive pairs): ``loop`` scores it against ground truth each epoch, under
    :func:`pair_key`, and its table and epoch lines show it with these words."""

    name: str  # the array in the method's state file
    label: str  # in the epoch line: "412 mined positive pairs (93.1% one person)"
    column: str  # the loop table's column head


def pair_key(name: str) -> str:
    """The key of a pair array's score in an epoch's train record (written by the loop, read by
    :meth:`Method.pair_figures`): the one place the record's key is spelled."""
    return f"{name}_quality"


@dataclass(frozen=True)
class RunDefaults:
    """How long the official command trains and how often it evaluates (ALGORITHMS.md §2.3, §9):
    ``loop``'s ``--epochs`` and ``--eval-every`` when the user gives neither."""

    epochs: int = 50
    eval_every: int = 10  # every N epochs and after the last one


@dataclass
class NoOptions:
    """An empty options section: the refine options of a method whose ``refine`` has none
    (labels pass through), the switches of a method that has no variants."""


class Method(TrainingMethod):
    """Base class of a method: the training hooks plus the stages it owns."""

    #: Options of the ``refine`` step (a dataclass of official defaults).
    RefineOptions: ClassVar[type] = NoOptions
    #: Method-level switches: options that choose a variant of the method and so are read by
    #: several sections (NCPLR's ``--global-local``: the model's halves, the clustering's
    #: distance and the training's losses); each field's ``reads`` names the sections.
    Switches: ClassVar[type] = NoOptions
    #: ``ClusterParams`` values of the official command that differ from CC's (eps 0.6 ...).
    cluster_defaults: ClassVar[dict[str, Any]] = {}
    #: Loop values that ``refine`` reads as options of the same name: ``epoch`` (0-based) and
    #: ``epochs`` (the run's number of epochs); they are part of the refine stage's cache key.
    refine_context: ClassVar[tuple[str, ...]] = ()
    #: Stages run once before epoch 0, whose outputs ``refine`` receives.
    preludes: ClassVar[tuple[Prelude, ...]] = ()
    #: Model settings of the official command that differ from CC's (GeM, no parts, 256×128),
    #: used for a fresh model when the user leaves them unset (PPLR: 3 average-pooled stripes
    #: at 384×128).
    model_defaults: ClassVar[dict[str, Any]] = {}
    #: The official run's length and evaluation cadence (CC: 50 epochs, evaluated every 10).
    run_defaults: ClassVar[RunDefaults] = RunDefaults()
    #: Training options that ``loop`` sets from its own values unless given (MAR's schedule
    #: follows the run's length: ``{"schedule_epochs": "epochs"}``); part of the train key.
    train_context: ClassVar[dict[str, str]] = {}
    #: Persistent arrays (``persistent_arrays``) holding pairs of train rows the method claims
    #: show one person; ``loop`` reports their precision when ground truth is known.
    pair_arrays: ClassVar[tuple[PairArray, ...]] = ()

    #: The method's options resolved once for every stage it runs (:func:`reidctl.methods.plan.make_plan`).
    plan = classmethod(make_plan)

    @classmethod
    def pair_figures(cls, train: Mapping[str, Any]) -> list[tuple[PairArray, dict[str, Any]]]:
        """Each pair array scored in an epoch's train record, with its score (``pairs``,
        ``judged``, ``precision``: None when ground truth judged none)."""
        return [(array, train[pair_key(array.name)]) for array in cls.pair_arrays if pair_key(array.name) in train]

    @classmethod
    def official_model(cls, switches: Any) -> dict[str, Any]:
        """The official model settings that differ from CC's under the resolved ``switches`` (a
        method whose variants use different models, as NCPLR with and without its halves, looks
        at them). Default: ``model_defaults``."""
        return dict(cls.model_defaults)

    @classmethod
    def official_clustering(cls, switches: Any) -> dict[str, Any]:
        """The official ``ClusterParams`` values that differ from CC's under the resolved
        ``switches`` (NCPLR's branch mixture follows ``--global-local`` and ``--lambda1``).
        Default: ``cluster_defaults``."""
        return dict(cls.cluster_defaults)

    @classmethod
    def resolve_clustering(cls, params: Any, n_samples: int) -> Any:
        """The ``ClusterParams`` to run on ``n_samples`` rows: a method may fill in values that
        depend on N (icrefine: the number of clusters). Default: unchanged."""
        return params

    # ---- refine

    @classmethod
    def refine(cls, features: Any, labels: np.ndarray, extra: Mapping[str, Any], options: Mapping[str, Any],
               *, seed: int = 1) -> Refined:
        """The ``refine`` stage: features + clustering labels → refined labels. Default: unchanged."""
        return Refined(np.asarray(labels, dtype=np.int32))
