"""Checkpoints: the model's structure and weights plus whatever training state a method keeps.

A training checkpoint (``reidctl.train.trainer.TrainSession.save``) also holds: ``epoch`` (the
last completed one), ``optimizer``, ``scheduler``, ``scaler`` (fp16 AMP), ``rng`` (see
:func:`capture_rng`), ``method``, ``method_params``, ``method_state``, ``heads``, ``bn_chunks``,
``history`` (per-epoch stats), ``steps`` (optimiser steps so far) and ``provenance``; and, when
the method keeps persistent arrays (``TrainingMethod.persistent_arrays``), ``method_arrays``: the
name and content digest of the file beside it that holds them (:func:`write_method_arrays`),
so the checkpoint's own digest changes with them while the arrays stay out of it.
"""

from __future__ import annotations

import hashlib
import random
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from reidctl.version import __version__
from reidctl.artifacts import CHECKPOINT, atomic_save, read_method_state, write_method_state
from reidctl.errors import ArtifactError
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.models.safeload import load_plain, one_line

CHECKPOINT_SCHEMA = CHECKPOINT
CHECKPOINT_VERSION = 1


#: Entries of a checkpoint that describe it but do not change what continuing from it computes:
#: wall-clock timings (``history``), where its inputs lay (``provenance``), the writer's version.
NOT_DIGESTED = ("digest", "history", "provenance", "reidctl_version")
#: Global RNG states a checkpoint keeps (so a resumed process continues as if never stopped) but
#: that nothing in training draws from: Python seeds ``random`` from the OS at start-up, so they
#: differ between two identical runs and must not make their checkpoints' digests differ.
UNSEEDED_RNGS = ("python", "numpy")


def save_checkpoint(path: str | Path, model: ReidModel, **state: Any) -> str:
    """Write atomically: model config + weights, and any extra state (optimiser, epoch, RNG ...).

    Everything is stored as plain data (:func:`plain`), so the file loads with
    ``weights_only=True`` and opening it never runs code. Returns the checkpoint's content digest
    (also stored in it as ``digest``)."""
    payload = plain({
        "schema": CHECKPOINT_SCHEMA,
        "schema_version": CHECKPOINT_VERSION,
        "reidctl_version": __version__,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        **state,
    })
    payload["digest"] = content_digest(payload)
    atomic_save(payload, path, lambda obj, tmp: torch.save(obj, tmp))
    return payload["digest"]


#: Containers a checkpoint may hold, besides dict, list and tuple: a model's state dict is an
#: OrderedDict, MultiStepLR's milestones a Counter; ``weights_only`` loading rebuilds both.
_MAPPINGS = (dict, OrderedDict, Counter)
_SCALARS = (str, int, float, bool, bytes, type(None), torch.dtype, torch.device, torch.Size)


def plain(value: Any, where: str = "checkpoint") -> Any:
    """``value`` as data that ``torch.load(weights_only=True)`` rebuilds: numpy scalars become
    Python numbers, numpy arrays lists (small RNG keys) or tensors; containers and tensors are
    kept (the same object when nothing inside changed: a state dict keeps its ``_metadata``).
    Anything else is a bug in reidctl and fails here, before a checkpoint nobody could load
    is written."""
    if isinstance(value, (torch.Tensor, *_SCALARS)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{where}: a {value.dtype} array is not plain data")
        return value.tolist() if value.size <= 4096 else torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, _MAPPINGS):
        items = {k: plain(v, f"{where}.{k}") for k, v in value.items()}
        if all(items[k] is value[k] for k in value):
            return value
        return type(value)(items) if type(value) is not dict else items
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(items)
    raise TypeError(f"{where}: a {type(value).__name__} is not plain data a checkpoint may hold")


def content_digest(payload: Mapping[str, Any]) -> str:
    """A digest of what a checkpoint holds (weights, optimiser, RNG, method state, the digest of
    its persistent arrays ...), leaving out :data:`NOT_DIGESTED` and the name of the arrays'
    file: re-training the same epoch to the same weights gives the same digest wherever the
    file lies, so the stages after it stay cached."""
    h = hashlib.sha256()
    digested = {k: v for k, v in payload.items() if k not in NOT_DIGESTED}
    if isinstance(digested.get("rng"), Mapping):  # see UNSEEDED_RNGS
        digested["rng"] = {k: v for k, v in digested["rng"].items() if k not in UNSEEDED_RNGS}
    if isinstance(digested.get("method_arrays"), Mapping):  # their content counts, not their file's name
        digested["method_arrays"] = digested["method_arrays"].get("digest")
    _hash_value(h, digested)
    return h.hexdigest()[:32]


def checkpoint_digest(path: str | Path, *, arrays: bool = False) -> str:
    """The content digest of a checkpoint file, computed from what it holds (tensors are
    memory-mapped); never the ``digest`` field written in it, which an edited file keeps.

    ``arrays``: also re-hash the method's persistent arrays in the file beside it (when it names
    one, :func:`method_state_file`) and count their actual content: for a checkpoint from outside a run folder, whose
    neighbour file nothing else checks before a cached stage is reused."""
    return payload_digest(load_checkpoint(path, mmap=True), path, arrays=arrays)


def payload_digest(payload: Mapping[str, Any], source: str | Path, *, arrays: bool = False) -> str:
    """:func:`checkpoint_digest` of a checkpoint already loaded from ``source`` (read it once)."""
    record = payload.get("method_arrays")
    if arrays and isinstance(record, Mapping):
        digest = read_method_state(method_state_file(record, source))[1]
        payload = {**payload, "method_arrays": {**record, "digest": digest}}
    return content_digest(payload)


def _hash_value(h: Any, value: Any) -> None:
    """Feed a nested structure of dicts, sequences, tensors, arrays and scalars into ``h``."""
    if isinstance(value, Mapping):
        h.update(b"{%d" % len(value))
        for key in sorted(value, key=str):
            _hash_value(h, str(key))
            _hash_value(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(b"[%d" % len(value))
        for item in value:
            _hash_value(h, item)
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        h.update(f"A{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, bytes):
        h.update(b"B" + value)
    else:  # str, int, float, bool, None, numpy scalars
        h.update(f"{type(value).__name__}:{value!r}".encode())


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's payload, checked to be ours and of a version this reidctl reads.

    Read with ``weights_only=True`` (:func:`reidctl.models.safeload.load_plain`): a file that
    holds anything but tensors and plain data is refused before any of it runs. ``mmap`` maps
    tensors instead of reading them (cheap when only metadata is needed)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such checkpoint")
    if not zipfile.is_zipfile(path):  # every torch.save file since torch 1.6 is a zip archive
        raise ArtifactError(f"{path}: not a checkpoint (not a file written by torch.save; a reidctl checkpoint "
                            "is the model.pt of a run's epoch folder)")
    payload = load_plain(path, refused="not a reidctl checkpoint", unreadable="not a readable checkpoint", mmap=mmap)
    if not isinstance(payload, dict) or payload.get("schema") != CHECKPOINT_SCHEMA:
        raise ArtifactError(f"{path}: not a reidctl checkpoint (for plain weights use --weights)")
    if payload.get("schema_version") != CHECKPOINT_VERSION:
        raise ArtifactError(
            f"{path}: checkpoint version {payload.get('schema_version')} is not supported "
            f"(this reidctl reads version {CHECKPOINT_VERSION})"
        )
    return payload


def read_model_config(path: str | Path) -> dict[str, Any]:
    """The ``model_config`` a checkpoint records (tensors memory-mapped, not read)."""
    payload = load_checkpoint(path, mmap=True)
    config = payload.get("model_config")
    if not isinstance(config, dict):
        raise ArtifactError(f"{path}: corrupt checkpoint, it records no model configuration")
    return ModelConfig.from_dict(config).to_dict()


def model_from_checkpoint(path: str | Path) -> ReidModel:
    return model_from_payload(load_checkpoint(path), path)


def model_from_payload(payload: dict[str, Any], source: str | Path) -> ReidModel:
    """The model of an already loaded checkpoint (so callers needing more of it read it once)."""
    model = ReidModel(ModelConfig.from_dict(payload["model_config"]))
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise ArtifactError(f"{source}: weights do not fit the recorded model ({one_line(exc)})") from None
    return model


# --------------------------------------------------------------------------------------------
# training state: what a later epoch needs to continue exactly


def capture_rng(generator: np.random.Generator | None = None) -> dict[str, Any]:
    """States of Python's, NumPy's and torch's global RNGs (CUDA when in use) and of ``generator``.

    Training itself draws only from ``generator`` (the sampler and the per-image augmentation
    seeds); the global states are kept so a resumed process continues as if never stopped. The
    numpy states are dicts of plain numbers and lists (their key arrays as lists), which a
    checkpoint loaded with ``weights_only=True`` rebuilds.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": plain(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = plain(generator.bit_generator.state)
    return state


def restore_rng(state: Mapping[str, Any], *, globals_too: bool = True) -> np.random.Generator | None:
    """Restore the global RNGs (unless ``globals_too`` is False); return the saved generator.
    Reads both the plain states of :func:`capture_rng` and the ndarray tuples older checkpoints hold."""
    if globals_too:
        if "python" in state:
            random.setstate(state["python"])
        if "numpy" in state:
            np.random.set_state(state["numpy"])  # numpy takes the key as a list or an array
        if "torch" in state:
            torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
    gen_state = state.get("generator")
    if gen_state is None:
        return None
    bit_gen = getattr(np.random, gen_state["bit_generator"])()
    bit_gen.state = gen_state
    return np.random.Generator(bit_gen)


def load_training_state(
    payload: Mapping[str, Any],
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any | None = None,
    heads: torch.nn.Module | None = None,
    source: str | Path = "checkpoint",
) -> None:
    """Load the parts of a checkpoint ``payload`` that exist into the given objects.

    A checkpoint written without training state (e.g. by ``save_checkpoint(path, model)``) has
    no optimiser: the caller's fresh optimiser is then left alone. An optimiser state that does
    not fit (another method's extra heads, another architecture) is a user error.
    """
    if model is not None:
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as exc:
            raise ArtifactError(f"{source}: weights do not fit the recorded model ({one_line(exc)})") from None
    if heads is not None and payload.get("heads") is not None:
        try:
            heads.load_state_dict(payload["heads"])
        except RuntimeError as exc:
            raise ArtifactError(f"{source}: the method's heads do not fit ({one_line(exc)})") from None
    if optimizer is not None and payload.get("optimizer") is not None:
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ArtifactError(
                f"{source}: the saved optimiser state does not fit this model/method "
                f"(checkpoint method '{payload.get('method')}'): {one_line(exc)}"
            ) from None
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])


# --------------------------------------------------------------------------------------------
# a method's persistent arrays: a file of their own beside the checkpoint


def method_arrays_path(checkpoint: str | Path) -> Path:
    """Where the persistent arrays of ``checkpoint`` go: ``e3.pt`` → ``e3.state.h5``."""
    return Path(checkpoint).with_suffix(".state.h5")


def write_method_arrays(checkpoint: str | Path, arrays: Mapping[str, np.ndarray], *, method: str,
                        epoch: int) -> dict[str, str]:
    """Write ``arrays`` beside ``checkpoint`` (atomically); returns the record the checkpoint
    keeps as ``method_arrays``: the file's name (it moves with the checkpoint) and digest."""
    path = method_arrays_path(checkpoint)
    digest = write_method_state(path, arrays, params={"method": method, "epoch": epoch})
    return {"file": path.name, "digest": digest}


def method_state_file(record: Mapping[str, Any], source: str | Path) -> Path:
    """The file of the persistent arrays a checkpoint read from ``source`` names in ``record``:
    beside ``source``, or beside the file it links to (``RUN/best.pt`` and ``RUN/last.pt`` are
    links into an epoch folder, where the state file sits); refused in one line when missing."""
    name = str(record.get("file"))
    beside = Path(source).parent / name
    path = beside if beside.is_file() else Path(source).resolve().parent / name
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file; it holds the method state that {source} was saved with "
                            "(keep it beside the checkpoint)")
    return path


def read_method_arrays(record: Mapping[str, str], source: str | Path) -> dict[str, np.ndarray]:
    """The arrays a checkpoint read from ``source`` names in ``record``, refused (one line naming
    the file) when the file is missing or its content is not what the checkpoint was saved with."""
    path = method_state_file(record, source)
    arrays, digest = read_method_state(path)
    if digest != record["digest"]:
        raise ArtifactError(f"{path}: holds other method state (digest {digest}) than {source} was saved with "
                            f"(digest {record['digest']}); it was changed or replaced after the checkpoint was written")
    return arrays


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """What a checkpoint holds, for ``reidctl inspect``: the model, the method and its resolved
    options, where training stands, the per-epoch history and the heads (tensors are
    memory-mapped, not read)."""
    payload = load_checkpoint(path, mmap=True)
    model = payload.get("model") or {}
    heads = payload.get("heads") or {}
    return {
        "path": str(path),
        "schema": payload.get("schema"),
        "schema_version": payload.get("schema_version"),
        "reidctl_version": payload.get("reidctl_version"),
        "digest": content_digest(payload),  # of what it holds, not the field written in it
        "model_config": payload.get("model_config"),
        "parameters": int(sum(t.numel() for t in model.values() if t.is_floating_point())),
        "method": payload.get("method"),
        "epoch": payload.get("epoch"),
        "steps": payload.get("steps"),
        "method_params": payload.get("method_params"),
        "heads": {k: list(v.shape) for k, v in heads.items()},
        "method_arrays": payload.get("method_arrays"),
        "history": payload.get("history") or [],
        "provenance": payload.get("provenance"),
    }
