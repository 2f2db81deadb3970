"""The registry of training methods: name → :class:`~reidctl.methods.base.Method` subclass.

It is filled by :mod:`reidctl.methods` (one line per method there) and read by the stages, the
CLI and :mod:`reidctl.methods.base` (to name the method an option belongs to); being a module of
its own, it imports none of the methods, so reading it never makes a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reidctl.errors import ReidctlError

if TYPE_CHECKING:
    from reidctl.methods.base import Method

METHODS: dict[str, type[Method]] = {}


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name`` (a user error when there is none)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ReidctlError(f"unknown --method '{name}' (choose one of {', '.join(METHODS)})") from None
