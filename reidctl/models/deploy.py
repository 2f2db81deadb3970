"""A trained model outside reidctl: a plain module, its preprocessing, TorchScript and ONNX.

:func:`load_model` turns a reidctl checkpoint into a ``torch.nn.Module`` in eval mode that maps a
*normalised* image batch (N×3×H×W float, resized to the model's input size and normalised with
``module.preprocessing``'s mean/std) to L2-normalised global features (N×C), exactly the
features ``reidctl extract`` stores. :func:`export_model` writes it as TorchScript or ONNX, with
the preprocessing in a JSON file beside it, so a deployment needs neither reidctl nor its
checkpoint format. :func:`export_plan` settles what ``reidctl export`` reads and writes: a run
folder's ``best.pt`` (else its ``last.pt``), the format from ``--format`` or the name's suffix
(``.ts`` TorchScript, ``.onnx`` ONNX), and a default name beside the checkpoint.
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

from reidctl.artifacts import (RUN_MODELS, EXPORT, EXPORT_RECORD, atomic_save, check_output, existing_kind, export_record_path,
                               same_file)
from reidctl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from reidctl.errors import ReidctlError
from reidctl.models.reid import ReidModel
from reidctl.models.checkpoint import content_digest, load_checkpoint, model_from_payload

EXPORT_FORMATS = ("torchscript", "onnx")
#: The one file name suffix of each format (what ``export`` writes by default, and expects).
EXPORT_SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx"}


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
    return extractor_of(load_checkpoint(path), path).to(device)


def extractor_of(payload: dict[str, Any], source: str | os.PathLike) -> FeatureExtractor:
    """The :class:`FeatureExtractor` (eval mode, on the CPU) of a checkpoint already loaded from
    ``source`` (so a caller that needs more of it reads it once)."""
    return FeatureExtractor(model_from_payload(payload, source), preprocessing_of(payload)).eval()


def run_model(source: str | os.PathLike) -> Path:
    """The checkpoint ``source`` names: itself, or for a ``loop`` run folder its ``best.pt`` (the
    best evaluated model, the initial one included), else its ``last.pt`` (a run not evaluated)."""
    source = Path(source)
    if not source.is_dir():
        return source
    for name in RUN_MODELS:
        if (source / name).is_file():
            return source / name
    raise ReidctlError(f"{source}: a folder without {' or '.join(RUN_MODELS)}; give a checkpoint (.pt), or a "
                       "`loop` run folder once an epoch has finished")


def export_format(out: Path | None, fmt: str | None) -> str:
    """``--format``, or the one ``--out``'s suffix names (``.onnx``: onnx; otherwise torchscript);
    a name whose suffix says the other format is refused (an ``m.onnx`` holding TorchScript)."""
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise ReidctlError(f"--format {fmt}: choose torchscript or onnx")
    suffix = None if out is None else out.suffix.lower()
    named = next((f for f, s in EXPORT_SUFFIXES.items() if s == suffix), None)
    if fmt is None:
        fmt = named or "torchscript"
    if suffix == ".pt":
        raise ReidctlError(f"--out {out}: .pt names reidctl checkpoints; name the {fmt} file "
                           f"{out.with_suffix(EXPORT_SUFFIXES[fmt]).name}")
    if named is not None and named != fmt:
        raise ReidctlError(f"--out {out}: a {suffix} name for --format {fmt}; name it "
                           f"{out.with_suffix(EXPORT_SUFFIXES[fmt]).name} (or give --format {named})")
    return fmt


def export_plan(source: str | os.PathLike, out: str | os.PathLike | None = None, fmt: str | None = None, *,
                force: bool = False) -> tuple[Path, Path, str]:
    """What ``export`` reads and writes: (checkpoint, out, format). ``out`` defaults to a name
    beside the checkpoint (``RUN/best.pt`` → ``RUN/best.ts`` or ``RUN/best.onnx``). Refused
    before any work: an ``out`` or ``OUT.json`` that is the checkpoint, and (without ``force``) an
    existing one that is not an earlier export."""
    checkpoint = run_model(source)
    out = None if out is None else Path(out)
    if out is not None:
        check_output(out, schema=EXPORT, inputs=(checkpoint,), force=True)  # over its own checkpoint: say so first
    fmt = export_format(out, fmt)
    out = out if out is not None else checkpoint.with_suffix(EXPORT_SUFFIXES[fmt])
    check_output(out, schema=EXPORT, inputs=(checkpoint,), force=force)
    record = export_record_path(out)
    if same_file(record, checkpoint) or (os.path.lexists(record) and not force
                                         and existing_kind(record) != EXPORT_RECORD):
        raise ReidctlError(f"{record} (where the preprocessing of --out goes) already exists and is not an export "
                           "record: refusing to overwrite it (choose another --out, or --force)")
    return checkpoint, out, fmt


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "torchscript",
                 batch: int = 2) -> dict[str, Any]:
    """Write the checkpoint's :class:`FeatureExtractor` as TorchScript (``torch.jit.trace``) or
    ONNX (opset 17, a dynamic batch axis) to ``out``, and its preprocessing to
    ``<out>.json`` (replacing a link there, never writing through it); both atomically. Returns
    what was written; the record names the checkpoint, the file it resolves to and its digest."""
    if fmt not in EXPORT_FORMATS:
        raise ReidctlError(f"--format {fmt}: choose torchscript or onnx")
    payload = load_checkpoint(checkpoint)
    module = extractor_of(payload, checkpoint)
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
    info = {"format": fmt, "out": str(out), "checkpoint": str(checkpoint),
            "checkpoint_file": os.path.realpath(checkpoint), "checkpoint_digest": content_digest(payload),
            "epoch": payload.get("epoch"), "preprocessing": prep, "input": ["N", 3, prep["height"], prep["width"]],
            "output": "N×C L2-normalised features", "channels": module.model.channels}
    sidecar = export_record_path(out)
    atomic_save(info, sidecar, lambda obj, tmp: Path(tmp).write_text(json.dumps(obj, indent=2)), replace_link=True)
    return info | {"preprocessing_file": str(sidecar)}


def _onnx_export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The TorchScript-based exporter (``dynamo=False``): it needs only the ``onnx`` package, where
    torch's default one also needs ``onnxscript``; its deprecation warning is not the user's."""
    try:
        import onnx  # noqa: F401  (the exporter needs it; fail early with the install line)
    except ImportError as exc:  # missing, or installed but broken (a missing library, a bad build)
        if isinstance(exc, ModuleNotFoundError) and exc.name == "onnx":
            raise ReidctlError("ONNX export needs the onnx package: pip install 'reidctl[onnx]'") from None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReidctlError(f"ONNX export needs a working onnx package (importing it failed: {reason}): "
                           "pip install 'reidctl[onnx]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, opset_version=17,
                          dynamo=False)
