"""A method: what it trains (:class:`~reidctl.train.contract.TrainingMethod`, the trainer's
contract) and the stages it owns around training: its clustering, its ``refine`` step, and the
model it starts from.

A method is a class with, beyond the training hooks,

* ``refine(features, labels, extra, options, seed=)``, ``refine_options(options)`` (classmethods)
  and ``cluster_defaults`` for the ``refine`` stage (default: labels unchanged, no options, CC's
  clustering);
* ``model_defaults``: the official model settings that differ from CC's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np

from reidctl.errors import ReidctlError
from reidctl.train.contract import Batch, EpochData, TrainingMethod, TrainParams

__all__ = ["Batch", "EpochData", "Method", "Refined", "TrainParams", "TrainingMethod"]


@dataclass
class Refined:
    """What a method's ``refine`` returns: labels (-1 = outlier/discarded) and what to store."""

    labels: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)  # arrays for labels.h5 (per-row matrices ...)
    summary: dict[str, Any] = field(default_factory=dict)  # numbers for the stage's report
    options: dict[str, Any] = field(default_factory=dict)  # the resolved refinement options
    attrs: dict[str, Any] = field(default_factory=dict)  # extra root attributes of labels.h5


class Method(TrainingMethod):
    """Base class of a method: the training hooks plus the stages it owns."""

    #: ``ClusterParams`` values of the official command that differ from CC's (eps 0.6 ...).
    cluster_defaults: ClassVar[dict[str, Any]] = {}
    #: Model settings of the official command that differ from CC's (GeM, no parts), used for a
    #: fresh model when the user leaves them unset (PPLR: 3 average-pooled stripes).
    model_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def model_settings(cls, *, pooling: str | None, parts: int | None) -> dict[str, Any]:
        """``pooling`` and ``parts`` as given, else the method's official value, else CC's."""
        base = {"pooling": "gem", "parts": 0, **cls.model_defaults}
        return {"pooling": base["pooling"] if pooling is None else pooling,
                "parts": base["parts"] if parts is None else parts}
    #: Whether ``loop`` runs the intra-camera stage (``reidctl intra-camera``) once before epoch 0
    #: and passes its labels, the epoch and the number of epochs to ``refine`` (icrefine).
    intra_camera: ClassVar[bool] = False

    @classmethod
    def resolve_clustering(cls, params: Any, n_samples: int) -> Any:
        """The ``ClusterParams`` to run on ``n_samples`` rows: a method may fill in values that
        depend on N (icrefine: the number of clusters). Default: unchanged."""
        return params

    @classmethod
    def refine_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The ``refine`` stage's options with the method's defaults filled in; options of another
        method are a user error (``loop`` checks them before its first stage). Default: none."""
        if options:
            opts = ", ".join("--" + o.replace("_", "-") for o in options)
            raise ReidctlError(f"{opts} does not apply to --method {cls.name} (it has no refinement options)")
        return {}

    @classmethod
    def refine(cls, features: Any, labels: np.ndarray, extra: Mapping[str, Any], options: Mapping[str, Any],
               *, seed: int = 1) -> Refined:
        """The ``refine`` stage: features + clustering labels → refined labels. Default: unchanged."""
        cls.refine_options(options)
        return Refined(np.asarray(labels, dtype=np.int32))

