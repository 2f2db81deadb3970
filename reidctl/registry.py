"""Registries of extensions: name → a method, a clustering algorithm, a dataset layout.

Each registry lives in a module of its own (``methods/registry.py``, ``cluster/algorithms/
registry.py``, ``data/layouts/registry.py``) that imports none of what it registers, and its
package's ``__init__`` fills it, one line per extension: so reading a registry never makes an
import cycle, and adding an extension is one module plus one line.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """A name → extension mapping, in registration order, whose :meth:`find` turns an unknown
    name into the registry's own one-line user error (``unknown(name, names)``)."""

    def __init__(self, unknown: Callable[[str, list[str]], Exception]) -> None:
        super().__init__()
        self.unknown = unknown

    def find(self, name: str) -> T:
        try:
            return self[name]
        except KeyError:
            raise self.unknown(name, list(self)) from None


def one_of(names: list[str]) -> str:
    """"a, b or c": the choices as a user error lists them."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else ", ".join(names)
