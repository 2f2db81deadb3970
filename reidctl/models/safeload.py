"""Reading a ``torch.save`` file without running any of its code.

A ``.pt`` file is a pickle, and unpickling calls whatever function the file names: with
``torch.load(weights_only=False)`` a shared checkpoint can run anything on the machine that
opens it. Every reidctl read of such a file (checkpoints, ``--weights``, MAR's agents) goes
through :func:`load_plain`: ``weights_only=True``, where only tensors, containers and plain
values (and the few torch types a state dict holds) can be rebuilt, plus, on top, the numpy
types that rebuild a plain numeric array. Checkpoints written before reidctl kept its RNG states
as plain lists held numpy's global RNG state as such an array; object arrays (whose items would
be arbitrary objects) stay refused. Anything else is refused with the names of the objects the
file asks for, read from its pickle without running it.
"""

from __future__ import annotations

import importlib
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reidctl.errors import ArtifactError


def one_line(exc: BaseException, limit: int = 400) -> str:
    """torch's multi-line load errors as one line (an ``error:`` message is one line)."""
    text = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _multiarray() -> Any:
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2, numpy 1
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("numpy's multiarray module")


def numpy_array_globals() -> list[Any]:
    """What rebuilding a plain numeric numpy array takes: ``_reconstruct`` (under the module name
    of numpy 1 and of numpy 2, so files of either load), ``ndarray``, ``dtype`` and the numeric
    dtype classes. Never ``ObjectDType``: an object array's items are arbitrary objects."""
    reconstruct = _multiarray()._reconstruct
    allowed: list[Any] = [np.ndarray, np.dtype]
    allowed += [(reconstruct, f"{mod}._reconstruct") for mod in ("numpy._core.multiarray", "numpy.core.multiarray")]
    numeric = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
               np.float16, np.float32, np.float64, np.complex64, np.complex128]
    allowed += sorted({type(np.dtype(t)) for t in numeric}, key=lambda c: c.__name__)
    return allowed


def _allowed_names() -> set[str]:
    names = set()
    for item in numpy_array_globals():
        if isinstance(item, tuple):
            names.add(item[1])
        else:
            names.add(f"{item.__module__}.{item.__qualname__}")
    return names


def unsafe_objects(path: str | Path, exc: BaseException) -> str:
    """The objects ``path`` asks the unpickler to build that cannot be built safely, named from
    its pickle's opcodes (nothing is run) or, failing that, from torch's refusal ``exc``; "" when
    ``exc`` is about something else (a truncated pickle)."""
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in _allowed_names()]
    except Exception:  # noqa: BLE001 - only a nicer message is lost
        names = []
    if not names:
        names = re.findall(r"GLOBAL (\S+) was not", str(exc)) + re.findall(r"but got <class '([^']+)'>", str(exc))
    return ", ".join(dict.fromkeys(names))


def load_plain(path: str | Path, *, refused: str, unreadable: str, mmap: bool = False) -> Any:
    """What ``path`` holds, rebuilt without running code (see the module's doc).

    ``refused``: what the file is said not to be when it holds objects that cannot be loaded
    safely ("not a reidctl checkpoint"); ``unreadable``: when it cannot be read at all. Both
    end in one ArtifactError line naming ``path``."""
    try:
        with torch.serialization.safe_globals(numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        unsafe = unsafe_objects(path, exc)
        if unsafe:
            raise ArtifactError(f"{path}: {refused} (it holds objects that cannot be loaded safely: "
                                f"{unsafe})") from None
        raise ArtifactError(f"{path}: {unreadable} ({one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a bad storage record ...: one line
        raise ArtifactError(f"{path}: {unreadable} ({one_line(exc)})") from None
