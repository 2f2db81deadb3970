"""A labelled source beside any method's training (``--aux-data``): the joint source step.

Domain adaptation with a labelled source is how these methods are mostly used: the source's
identities keep the model's features discriminative while the method learns the target's
pseudo identities. :class:`JointSource` adds that to any method, unchanged, through the
trainer's stream and step hooks:

* **stream**: each step also takes a shuffled batch of ``--aux-batch`` labelled source images
  (:func:`~reidctl.train.streams.labelled_stream`, CC's augmentation with the source's
  normalisation), the source starting a new pass whenever one is exhausted; the method's own
  stream still defines the epoch;
* **step**: the method's ``training_step`` runs as it always does, but its forward pass takes
  ``[source, target]`` in one call, each batch normalised by its own BatchNorm statistics (the
  running statistics the target's); to the method's loss it adds ``--aux-weight`` × the
  normalised softmax of the source features over the source identities,
  ``CE(scale·cos(z, a_k), y)`` (:func:`~reidctl.train.losses.agent_learning_loss`: the loss of
  ``reidctl pretrain``, whose agents start the classifier when the run starts from such a
  checkpoint of the same source);
* **heads**: the method's heads plus the source classifier (:class:`~reidctl.train.agents.AgentClassifier`),
  optimised by the method's optimiser and saved in the checkpoint with the options
  (``source``), so a resumed epoch rebuilds the same step.

A method that learns from the source itself (MAR: ``learns_source``) reads the same options
and is not wrapped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from reidctl.data.source import SOURCE_SPLITS, SourceData, load_source
from reidctl.data.transforms import train_transform
from reidctl.errors import ReidctlError
from reidctl.models.reid import ReidModel
from reidctl.options import option
from reidctl.train.agents import AgentClassifier
from reidctl.train.bn_chunks import check_bn_chunks
from reidctl.train.epoch import EpochData, StreamContext
from reidctl.train.losses import agent_learning_loss
from reidctl.train.streams import labelled_stream, zip_streams
from reidctl.train.wrapper import MethodWrapper

#: The output key of the source classifier's weights in a joint step.
SOURCE_AGENTS = "source_agents"


@dataclass
class SourceParams:
    """The labelled source section of a method's options (``--aux-*``); our defaults, as no
    seed code trains its refinement beside a source. ``aux_data`` empty: no source."""

    aux_data: str = field(default="", metadata=option(
        "A labelled source dataset trained beside the target: each step adds --aux-batch source images and "
        "the normalised softmax over its identities (mar: the source its agents learn from, required).",
        path=True))
    aux_dataset: str | None = field(default=None, metadata=option("Force the source's layout."))
    aux_splits: str = field(default="train", metadata=option(
        "The source splits whose identities are learnt: train, or train,test (every identity, test identities "
        "numbered after the train ones: MAR's 4,101 of MSMT17)."))
    aux_weight: float = field(default=1.0, metadata=option(
        "Weight of the source's normalised-softmax loss beside the method's own loss."))
    aux_batch: int = field(default=64, metadata=option("Labelled source images per step (beside the target batch)."))
    aux_scale: float = field(default=30.0, metadata=option(
        "Scale of the source's normalised softmax (the pretraining's and MAR's 30)."))

    def check(self) -> None:
        if self.aux_splits not in SOURCE_SPLITS:
            raise ReidctlError(f"--aux-splits {self.aux_splits}: choose train or train,test")
        if self.aux_weight < 0 or self.aux_scale <= 0:
            raise ReidctlError("--aux-weight must not be negative and --aux-scale must be positive")
        if self.aux_batch < 2:
            raise ReidctlError("--aux-batch must be at least 2")

    def load(self) -> SourceData:
        """The labelled source these options name (``reidctl.data.source.load_source``)."""
        return load_source(self.aux_data, self.aux_dataset, self.aux_splits)

    @property
    def given(self) -> bool:
        """Whether a source is given (the joint step runs)."""
        return bool(self.aux_data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class JointHeads(nn.Module):
    """The method's heads (or none) and the source classifier, as one module of heads."""

    def __init__(self, method: nn.Module | None, source: AgentClassifier) -> None:
        super().__init__()
        self.method = method
        self.source = source

    def forward(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        extra = {} if self.method is None else dict(self.method(outputs))
        return {**extra, SOURCE_AGENTS: self.source(outputs)["agents"]}


class JointSource(MethodWrapper):
    """``method`` trained beside a labelled source (see the module docstring). Every hook it
    does not override is the method's own (``name``, ``params``, the schedule, the state ...)."""

    def __init__(self, method: Any, options: SourceParams, source: SourceData | None = None) -> None:
        super().__init__(method)
        self.options = options
        self._source = source

    @property
    def source(self) -> SourceData:
        if self._source is None:
            self._source = self.options.load()
        return self._source

    def build_heads(self, model: ReidModel) -> JointHeads:
        return JointHeads(self.method.build_heads(model), AgentClassifier(model.channels,
                                                                          torch.as_tensor(self.source.pids)))

    def start_agents(self, heads: Mapping[str, Any] | None, session_heads: JointHeads) -> str | None:
        """Start the source classifier from a checkpoint's agents (``reidctl pretrain``'s) when
        they are this source's identities. Returns None when they were taken or there were none,
        else the sentence that says why the classifier starts fresh: the pretraining learnt
        other identities (most often other splits of the same source)."""
        pids = None if heads is None else heads.get("pids")
        if pids is None:
            return None
        pids = torch.as_tensor(pids, dtype=torch.int64)
        if not torch.equal(pids, session_heads.source.pids.cpu()):
            return (f"the checkpoint's source classifier holds {len(pids)} identities, --aux-data's "
                    f"--aux-splits {self.options.aux_splits} {len(session_heads.source.pids)}: the source classifier "
                    "starts fresh (give --aux-splits the splits the model was pretrained on, e.g. train,test)")
        session_heads.source.load_state_dict({"weight": heads["weight"], "pids": pids})
        return None

    def make_state(self, data: EpochData, heads: nn.Module | None) -> Any:
        return self.method.make_state(data, heads.method if isinstance(heads, JointHeads) else heads)

    def train_stream(self, ctx: StreamContext) -> Iterable[Any]:
        """The method's stream, each step with a source batch (``ctx.length`` of them)."""
        o, source = self.options, self.source
        if o.aux_batch % ctx.world:
            raise ReidctlError(f"--aux-batch {o.aux_batch} is not divisible by the {ctx.world} processes")
        check_bn_chunks(o.aux_batch, self.method.params.bn_chunks)  # the source batch is chunked as the target's
        target = self.method.train_stream(ctx)
        norm = ctx.norm_of(source.train or source.samples)
        batches = labelled_stream(ctx, source.samples, source.labels, batch_size=o.aux_batch, steps=ctx.length,
                                  transform=train_transform(ctx.height, ctx.width, norm.mean, norm.std))
        return zip_streams(target, batches)

    def training_step(self, inputs: Any, forward: Any, state: Any) -> Any:
        """The method's step on the target, its first forward pass taking the source batch too;
        the source's normalised softmax, weighted, added to its loss (logged as ``source``)."""
        target, source = inputs
        captured: dict[str, Any] = {}

        def joint_forward(images: Any) -> Any:
            if captured:  # a further forward pass of the method's step: the target alone
                return forward(images)
            many = isinstance(images, (list, tuple))
            outs = forward([source.images, *(images if many else [images])])
            captured["source"] = outs[0]
            return outs[1:] if many else outs[1]

        step = self.method.training_step(target, joint_forward, state)
        if not captured:
            raise ReidctlError(f"--method {self.method.name}: its training step made no forward pass to join the "
                               "source batch to")
        out = captured["source"]
        z = F.normalize(out["global"].float(), dim=1)
        loss = agent_learning_loss(z, out[SOURCE_AGENTS], source.labels, self.options.aux_scale)
        return type(step)(step.loss + self.options.aux_weight * loss, {**step.logs, "source": loss.detach()},
                          step.outputs)

    def after_backward(self, inputs: Any, outputs: Any, state: Any) -> None:
        self.method.after_backward(inputs[0], outputs, state)
