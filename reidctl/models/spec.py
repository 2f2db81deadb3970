"""Where a model comes from: a checkpoint, or a fresh build from architecture options.

Every stage that builds or loads a model (extract, train-epoch, evaluate, a method's prelude)
takes a :class:`ModelSpec`; the ``loop`` keys its stages on it (:func:`reidctl.pipeline.loop.model_key`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import torch

from reidctl.errors import ReidctlError
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.options import option
from reidctl.models.weights import (build_model, check_weights, imagenet_state_dict, init_description,
                                    read_weights_file, resolve_start)
from reidctl.models.checkpoint import (
    load_checkpoint,
    model_from_payload,
    read_model_config,
)

#: The fields of a ModelSpec that fix the model's structure (a checkpoint records them).
STRUCTURE = ("arch", "pooling", "last_stride", "parts", "part_split", "height", "width", "neck", "last_relu",
             "input_norm")


@dataclass
class ModelSpec:
    """Where a model comes from: a checkpoint, or a fresh build from architecture options."""

    checkpoint: Path | None = None
    arch: str = field(default="resnet50", metadata=option("Backbone: resnet50, resnet18 or mobilenet_v2."))
    pooling: str = field(default="gem", metadata=option("Global pooling of a fresh model: gem (learnable p) or avg."))
    last_stride: int = field(default=1, metadata=option("Stride of the last stage: 1 (the papers' default) or 2."))
    parts: int = field(default=0, metadata=option("Horizontal part stripes of a fresh model (0 = none)."))
    part_split: str = field(default="disjoint", metadata=option(
        "How stripes split the map's rows: disjoint (at (i·H)//P, the official splits) or adaptive "
        "(AdaptiveAvgPool2d's bins, which overlap when P does not divide H)."))
    height: int = field(default=256, metadata=option("Input height in pixels (128 suits CPU work)."))
    width: int = field(default=128, metadata=option("Input width in pixels (64 suits CPU work)."))
    neck: str = field(default="bn", metadata=option(
        "After pooling: bn (a BatchNorm neck, the CC family) or none (the pooled feature, MAR)."))
    last_relu: bool = field(default=True, metadata=option(
        "ResNet: keep the ReLU after the last block (MAR drops it: --no-last-relu).", flag="--last-relu"))
    input_norm: str = field(default="imagenet", metadata=option(
        "Image normalisation: imagenet mean/std, or dataset (the per-channel mean/std of the train split of "
        "the dataset the images come from, as MAR)."))
    weights: Path | None = field(default=None, metadata=option(
        "Backbone weights file: a torchvision state dict or its 'features' part."))
    pretrained: str | None = field(default=None, metadata=option(
        "Start of a fresh model: imagenet (torchvision's weights, as the official commands; fetched once into "
        "torch's cache) or none (random weights, on purpose). Default: imagenet, unless --weights FILE is given."))

    def check_given(self, given: Iterable[str]) -> None:
        """With a checkpoint the model comes from it: refuse model options the user *gave* that it
        would silently ignore (``given``: names set on the command line). An option equal to the
        checkpoint's value is harmless and allowed."""
        if self.checkpoint is None:
            return
        given = set(given)
        if "weights" in given or "pretrained" in given:
            raise ReidctlError("--weights and --pretrained choose the start of a fresh model; with --checkpoint the "
                               "weights come from the checkpoint (drop one of them)")
        recorded = read_model_config(self.checkpoint)
        differ = [f"--{f.replace('_', '-')} {getattr(self, f)} (the checkpoint has {recorded[f]})"
                  for f in STRUCTURE if f in given and recorded.get(f) != getattr(self, f)]
        if differ:
            raise ReidctlError(f"{self.checkpoint}: the model's structure comes from the checkpoint, but "
                               f"{', '.join(differ)}; drop those options")

    @property
    def start(self) -> str:
        """How a fresh model starts: ``weights`` (the file), ``imagenet`` or ``none`` (random)."""
        return resolve_start(self.pretrained, self.weights)

    def resolved(self) -> ModelSpec:
        """The same spec with the start written out (``pretrained`` imagenet or none; None beside a
        weights file): what a run records and keys its stages on."""
        return replace(self, pretrained=None if self.start == "weights" else self.start)

    def check_start(self) -> None:
        """Fail now, in one line, when a fresh model could not get its start (ImageNet weights
        neither in torch's cache nor downloadable, a missing weights file): before a run folder
        is made or an hour of work is done. Fetches ImageNet weights into torch's cache."""
        if self.checkpoint is not None:
            return
        start = self.start
        if start == "imagenet":
            imagenet_state_dict(self.arch)
        elif start == "weights":
            read_weights_file(self.weights)

    def model_config(self) -> ModelConfig:
        """The structure of a fresh model from these options; a bad value fails here, cheaply."""
        return ModelConfig(self.arch, self.pooling, self.parts, self.last_stride, self.height, self.width,
                           self.part_split, self.neck, self.last_relu, self.input_norm)

    def build(self, seed: int = 1) -> tuple[ReidModel, dict[str, Any]]:
        """The model and its provenance (what the artifact's ``params`` should record); ``seed``
        (the run's, :class:`reidctl.runtime.Runtime`) draws a fresh model's random weights.

        Weights whose features would be NaN are refused here, before any image is read
        (:func:`~reidctl.models.weights.check_weights`)."""
        if self.checkpoint is not None:
            payload = load_checkpoint(self.checkpoint)
            model, epoch = model_from_payload(payload, self.checkpoint), payload.get("epoch")
            provenance = {"model": model.config.to_dict(), "init": f"checkpoint:{Path(self.checkpoint).name}",
                          "epoch": epoch}
            source = str(self.checkpoint)
        else:
            config = self.model_config()
            torch.manual_seed(seed)  # random initialisation is part of the experiment
            model = build_model(config, pretrained=self.pretrained, weights=self.weights)
            provenance = {"model": config.to_dict(), "init": init_description(self.pretrained, self.weights)}
            source = str(self.weights) if self.weights is not None else f"the {self.start} {config.arch} weights"
        check_weights(model, source)
        return model, provenance
