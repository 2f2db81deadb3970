"""Stage requests from one flat set of keyword arguments, as tests write them: the model's
options go to its ``ModelSpec``, how it runs to its ``Runtime``, the rest to the request."""

from __future__ import annotations

import dataclasses
from typing import Any

from reidctl.models.spec import ModelSpec
from reidctl.runtime import Runtime

MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}
RUNTIME_FIELDS = {f.name for f in dataclasses.fields(Runtime)}


def split_request(cls: type, **flat: Any) -> Any:
    """``cls(model=ModelSpec(...), runtime=Runtime(...), **the rest)`` from ``flat``."""
    model = ModelSpec(**{k: v for k, v in flat.items() if k in MODEL_FIELDS})
    runtime = Runtime(**{k: v for k, v in flat.items() if k in RUNTIME_FIELDS})
    rest = {k: v for k, v in flat.items() if k not in MODEL_FIELDS | RUNTIME_FIELDS}
    return cls(model=model, runtime=runtime, **rest)
