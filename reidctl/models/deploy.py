"""A trained model outside reidctl: a plain module, its preprocessing, TorchScript and ONNX.

:func:`load_model` turns a reidctl checkpoint into a ``torch.nn.Module`` in eval mode that maps a
*normalised* image batch (N×3×H×W float, resized to the model's input size and normalised with
``module.preprocessing``'s mean/std) to L2-normalised global features (N×C), exactly the
features ``reidctl extract`` stores. :func:`export_model` writes it as TorchScript or ONNX, with
the preprocessing in a JSON file beside it, so a deployment needs neither reidctl nor its
checkpoint format.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from reidctl.artifacts import atomic_save
from reidctl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from reidctl.errors import ReidctlError
from reidctl.models.reid import ReidModel
from reidctl.train.checkpoint import load_checkpoint, model_from_payload

EXPORT_FORMATS = ("torchscript", "onnx")


class FeatureExtractor(nn.Module):
    """Normalised images → L2-normalised global features (the features every stage stores)."""

    def __init__(self, model: ReidModel, preprocessing: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.preprocessing = preprocessing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(images)["global"].float(), dim=1)


def preprocessing_of(payload: dict[str, Any]) -> dict[str, Any]:
    """How images must be prepared for a checkpoint's model: input size, bicubic resize, and the
    mean/std (ImageNet's, or the training dataset's with ``--input-norm dataset``, as recorded
    when the checkpoint was trained)."""
    config = payload["model_config"]
    prep: dict[str, Any] = {"height": config["height"], "width": config["width"], "resize": "bicubic",
                            "pixel_scale": "RGB values / 255, then (x - mean) / std",
                            "input_norm": config.get("input_norm", "imagenet")}
    if prep["input_norm"] == "imagenet":
        prep["mean"], prep["std"] = list(IMAGENET_MEAN), list(IMAGENET_STD)
    else:
        norm = (payload.get("provenance") or {}).get("norm")
        if norm is None:
            raise ReidctlError("the checkpoint's model normalises with its training dataset's statistics "
                               "(--input-norm dataset), which this checkpoint does not record; re-train one epoch "
                               "with this version of reidctl to record them")
        prep["mean"], prep["std"] = list(norm["mean"]), list(norm["std"])
    return prep


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The model of a reidctl checkpoint as a ready module in eval mode on ``device``; its
    ``preprocessing`` attribute says how to prepare images (size, mean, std)."""
    payload = load_checkpoint(path)
    model = model_from_payload(payload, path)
    return FeatureExtractor(model, preprocessing_of(payload)).eval().to(device)


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "torchscript",
                 batch: int = 2) -> dict[str, Any]:
    """Write the checkpoint's :class:`FeatureExtractor` as TorchScript (``torch.jit.trace``) or
    ONNX (opset 17, a dynamic batch axis) to ``out``, and its preprocessing to
    ``<out>.json``; both atomically. Returns what was written."""
    if fmt not in EXPORT_FORMATS:
        raise ReidctlError(f"--format {fmt}: choose torchscript or onnx")
    module = load_model(checkpoint)
    prep = module.preprocessing
    example = torch.randn(batch, 3, prep["height"], prep["width"])
    out = Path(out)
    with torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():  # torch ≥ 2.9 marks the jit API deprecated; it still works
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(module, example)
                atomic_save(traced, out, lambda obj, tmp: torch.jit.save(obj, str(tmp)))
        else:
            atomic_save(module, out, lambda obj, tmp: _onnx_export(obj, example, tmp))
    info = {"format": fmt, "out": str(out), "checkpoint": str(checkpoint), "preprocessing": prep,
            "output": "N×C L2-normalised features", "channels": module.model.channels}
    sidecar = out.with_name(out.name + ".json")
    atomic_save(info, sidecar, lambda obj, tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))
    return info | {"preprocessing_file": str(sidecar)}


def _onnx_export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The TorchScript-based exporter (``dynamo=False``): it needs only the ``onnx`` package, where
    torch's default one also needs ``onnxscript``; its deprecation warning is not the user's."""
    try:
        import onnx  # noqa: F401  (the exporter needs it; fail early with the install line)
    except ModuleNotFoundError:
        raise ReidctlError("ONNX export needs the onnx package: pip install 'reidctl[onnx]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, opset_version=17,
                          dynamo=False)
