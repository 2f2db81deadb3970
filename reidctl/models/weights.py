"""Initialising a backbone: ImageNet weights through torchvision, a local file, or nothing."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from pathlib import Path

import torch
import torchvision

from reidctl.errors import ReidctlError
from reidctl.models.backbones import IMAGENET_WEIGHTS
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.models.safeload import load_plain

#: Prefixes of classifier heads that a torchvision state dict carries and a trunk does not use.
_HEAD_PREFIXES = ("fc.", "classifier.")


#: ``--pretrained`` values: torchvision's ImageNet weights (the official commands' start) or none
#: (random weights, chosen on purpose).
PRETRAINED = ("imagenet", "none")


def fetch_imagenet(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict of ``arch``: read from torch's cache, downloaded into it
    the first time. The one place reidctl touches the network (tests replace it)."""
    weights = torchvision.models.get_weight(IMAGENET_WEIGHTS[arch])
    return weights.get_state_dict(progress=False, weights_only=True)  # a cached file is read without running code


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """:func:`fetch_imagenet`, with one user error naming both ways out when it fails. torch prints
    its "Downloading: ..." line on stdout, where ``--json`` output goes: it is moved to stderr, and
    shown only when the download works."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            state = fetch_imagenet(arch)
        sys.stderr.write(said.getvalue())
        return state
    except Exception as exc:  # URLError, socket errors, hash mismatches ...
        raise ReidctlError(
            f"could not fetch torchvision's ImageNet weights for {arch} ({type(exc).__name__}: {exc}); a fresh "
            "model starts from them by default: give a local copy with --weights FILE, or start from random "
            "weights on purpose with --pretrained none"
        ) from None


def resolve_start(pretrained: str | None, weights: str | Path | None) -> str:
    """How a fresh model starts: ``"weights"`` (a file), ``"imagenet"`` or ``"none"`` (random).

    ``pretrained`` None means "not chosen": ImageNet, as every official command starts, unless a
    weights file is given. A weights file together with an explicit ``--pretrained`` is refused.
    """
    if pretrained is not None and pretrained not in PRETRAINED:
        raise ReidctlError(f"unknown --pretrained '{pretrained}' (choose imagenet or none)")
    if weights is not None:
        if pretrained is not None:
            raise ReidctlError(f"--weights FILE and --pretrained {pretrained} both choose the start of a fresh model; "
                               "give one of them")
        return "weights"
    return pretrained or "imagenet"


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a ``--weights`` file, read without running any code the file carries
    (:func:`reidctl.models.safeload.load_plain`)."""
    path = Path(path)
    if not path.is_file():
        raise ReidctlError(f"{path}: weights file not found")
    what = "not a readable PyTorch weights file"
    obj = load_plain(path, refused=what, unreadable=what)
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


def build_model(config: ModelConfig, *, pretrained: str | None = None, weights: str | Path | None = None) -> ReidModel:
    """A fresh model initialised from ``weights`` (a file), ImageNet (the default) or randomly
    (``pretrained='none'``); see :func:`resolve_start`."""
    start = resolve_start(pretrained, weights)
    model = ReidModel(config)
    if start == "weights":
        load_backbone_weights(model, read_weights_file(weights), str(weights))
    elif start == "imagenet":
        load_backbone_weights(model, imagenet_state_dict(config.arch), f"torchvision {config.arch} weights")
    return model


def init_description(pretrained: str | None, weights: str | Path | None) -> str:
    """How a model was initialised, for provenance: ``weights:NAME``, ``imagenet`` or ``random``."""
    start = resolve_start(pretrained, weights)
    if start == "weights":
        return f"weights:{Path(weights).name}"
    return "imagenet" if start == "imagenet" else "random"


def model_digest(model: ReidModel) -> str:
    """The identity of a model as features depend on it: its structure (architecture, input
    size, pooling, normalisation ...) and the content of every weight and buffer. Two random
    initialisations, or two weights files of the same name, differ; the same weights under
    another file name do not."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def check_weights(model: ReidModel, source: str) -> None:
    """Refuse, before any image is read, weights whose features would all be NaN: a value that is
    not finite, or a BatchNorm running variance below 0 (its square root in evaluation mode is
    NaN). ``source`` names where the weights came from."""
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ReidctlError(f"{source}: holds values that are not finite ({name}: {bad} NaN/Inf); every "
                               "feature would be NaN")
        if name.endswith("running_var") and bool((tensor < 0).any()):
            raise ReidctlError(f"{source}: its BatchNorm statistics are corrupt ({name}: {int((tensor < 0).sum())} "
                               "negative variances); every feature would be NaN")
