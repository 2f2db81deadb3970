"""The registry of dataset layouts: ``--dataset`` name → :class:`~reidctl.data.layouts.base.Layout`,
filled by :mod:`reidctl.data.layouts` (one line per layout there; see :mod:`reidctl.registry`) and
read by :mod:`reidctl.data.datasets` and the CLI. Its order is the order in which detection asks
the layouts (the first that claims a folder wins) and the order ``--dataset`` lists them in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reidctl.errors import DatasetError
from reidctl.registry import Registry

if TYPE_CHECKING:
    from reidctl.data.layouts.base import Layout

LAYOUTS: Registry[Layout] = Registry(
    lambda name, names: DatasetError(f"unknown dataset '{name}' (choose one of {', '.join(names)})"))


def get_layout(name: str) -> Layout:
    """The layout registered under ``name`` (a user error when there is none)."""
    return LAYOUTS.find(name)
