"""Initialising a backbone: ImageNet weights through torchvision, a local file, or nothing."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from reidctl.errors import ReidctlError
from reidctl.models.backbones import IMAGENET_WEIGHTS
from reidctl.models.reid import ModelConfig, ReidModel

#: Prefixes of classifier heads that a torchvision state dict carries and a trunk does not use.
_HEAD_PREFIXES = ("fc.", "classifier.")


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights (downloaded once into the torch hub cache)."""
    try:
        weights = torchvision.models.get_weight(IMAGENET_WEIGHTS[arch])
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # URLError, socket errors, hash mismatches ...
        raise ReidctlError(
            f"could not fetch torchvision's ImageNet weights for {arch} ({type(exc).__name__}: {exc}); "
            "without internet, pass a local file with --weights FILE instead of --pretrained imagenet"
        ) from None


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ReidctlError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ReidctlError(f"{path}: not a readable PyTorch weights file ({exc})") from None
    if isinstance(obj, dict) and obj.get("schema") == "reidctl/checkpoint":
        raise ReidctlError(f"{path}: is a reidctl checkpoint; pass it with --checkpoint, not --weights")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ReidctlError(f"{path}: expected a state dict (parameter name → tensor)")
    return obj


def load_backbone_weights(model: ReidModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision state dict, or only its backbone part, into ``model.backbone``.

    Accepts the full torchvision model (``features.0.0.weight``, ``conv1.weight``; the classifier
    is ignored), a ``features`` part alone (``0.0.weight``, as in MobileNetV2 feature files) and
    ``module.``-prefixed keys from DataParallel.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    expected = model.backbone.state_dict()
    if hasattr(model.backbone, "features") and not any(k.startswith("features.") for k in state):
        state = {f"features.{k}": v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label} {len(keys)} (e.g. {keys[0]})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise ReidctlError(f"{source}: does not fit the {model.config.arch} backbone: {detail}")
    model.backbone.load_state_dict(state)


def build_model(config: ModelConfig, *, pretrained: str = "none", weights: str | Path | None = None) -> ReidModel:
    """A fresh model initialised from ``weights`` (a file), ``pretrained='imagenet'`` or randomly."""
    if weights is not None and pretrained not in ("none", ""):
        raise ReidctlError("give either --weights FILE or --pretrained imagenet, not both")
    model = ReidModel(config)
    if weights is not None:
        load_backbone_weights(model, read_weights_file(weights), str(weights))
    elif pretrained == "imagenet":
        load_backbone_weights(model, imagenet_state_dict(config.arch), f"torchvision {config.arch} weights")
    elif pretrained not in ("none", ""):
        raise ReidctlError(f"unknown --pretrained '{pretrained}' (choose imagenet or none)")
    return model


def init_description(pretrained: str, weights: str | Path | None) -> str:
    """How a model was initialised, for provenance."""
    if weights is not None:
        return f"weights:{Path(weights).name}"
    return "imagenet" if pretrained == "imagenet" else "random"
