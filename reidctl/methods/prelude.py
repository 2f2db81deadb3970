"""What a method declares about the stages it owns beyond the per-epoch ones.

The ``loop`` (:mod:`reidctl.pipeline.loop`) runs extract → cluster → refine → train every epoch. A
method adds *preludes*: stages that run once before epoch 0, cached and resumed like every
stage (icrefine's intra-camera training; a source pretraining). It declares them here, with no
dependence on the loop's code, and the loop knows them only through this contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from reidctl.data.base import Dataset
from reidctl.models.spec import ModelSpec
from reidctl.runtime import Runtime


@dataclass(frozen=True)
class RunContext:
    """What the loop knows that a prelude may need: the data, the fresh model, the machine."""

    data: str
    dataset: str | None
    model: ModelSpec  # the fresh model of epoch 0 (no checkpoint)
    runtime: Runtime  # the run's device, precision, workers, seed ...


@dataclass(frozen=True)
class Prelude:
    """A stage a method runs once before epoch 0, into ``RUN/<name>/<output>``.

    ``run(context, options, out)`` makes the output and returns a JSON-able summary; ``Options``
    is the dataclass of its options (official defaults, declared with :func:`reidctl.options.option`;
    ``loop`` shows them as ``--<name>-<option>``). The output reaches the method's ``refine`` as
    its option ``feeds`` (or, with ``starts_model``, is the checkpoint epoch 0 starts from); a
    user can hand ``loop`` a ready-made output instead with ``--<feeds> FILE``, which
    ``read_given(path, train_split)`` checks and returns the digest of.
    ``resolve(given, training)`` builds the options from the given prelude options and the
    given training options (a prelude may follow some of those); the loop keys the stage on the
    resolved options, the seed, the train images, the model and the precision.
    """

    name: str
    output: str
    Options: type
    run: Callable[[RunContext, Any, Path], dict[str, Any]]
    feeds: str
    read_given: Callable[[Path, Dataset], str]
    resolve: Callable[[Mapping[str, Any], Mapping[str, Any]], Any]
    help: str = ""
    #: The output is a checkpoint that epoch 0 starts from (MAR's source pretraining), instead
    #: of a file for ``refine``; ``loop --checkpoint FILE`` replaces the stage (``feeds`` is then
    #: ``"checkpoint"``).
    starts_model: bool = False
    #: What the stage reads beyond the target's train images, for its cache key (a source
    #: dataset's fingerprint), from its resolved options.
    reads: Callable[[Any], Mapping[str, Any]] | None = None
