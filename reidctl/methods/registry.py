"""The registry of training methods: name → :class:`~reidctl.methods.base.Method` subclass,
filled by :mod:`reidctl.methods` (one line per method there; see :mod:`reidctl.registry`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reidctl.errors import ReidctlError
from reidctl.registry import Registry

if TYPE_CHECKING:
    from reidctl.methods.base import Method

METHODS: Registry[type[Method]] = Registry(
    lambda name, names: ReidctlError(f"unknown --method '{name}' (choose one of {', '.join(names)})"))


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name`` (a user error when there is none)."""
    return METHODS.find(name)
