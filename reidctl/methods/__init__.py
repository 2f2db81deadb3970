"""Training methods and their registry: name → :class:`~reidctl.methods.base.Method` subclass.

A later method adds its module and one entry to :data:`METHODS`.
"""

from __future__ import annotations

from reidctl.errors import ReidctlError
from reidctl.methods.base import Batch, EpochData, Method, Refined, TrainParams
from reidctl.methods.cc import CCParams, ClusterContrast
from reidctl.methods.icrefine import Icrefine, IcrefineParams
from reidctl.methods.mar import MAR, MARParams
from reidctl.methods.ncplr import GLNCPLR, NCPLR, NCPLRParams
from reidctl.methods.pplr import PPLR, PPLRParams

METHODS: dict[str, type[Method]] = {
    "cc": ClusterContrast,
    "pplr": PPLR,
    "icrefine": Icrefine,
    "ncplr": NCPLR,
    "gl-ncplr": GLNCPLR,
    "mar": MAR,
}


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name`` (a user error when there is none)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ReidctlError(f"unknown --method '{name}' (choose one of {', '.join(METHODS)})") from None


__all__ = ["METHODS", "Batch", "CCParams", "ClusterContrast", "EpochData", "Icrefine", "IcrefineParams", "MAR", "MARParams", "Method",
           "NCPLR", "NCPLRParams", "PPLR", "PPLRParams", "Refined", "TrainParams", "get_method"]
