"""Training methods: each one a module or package, registered here under its ``--method`` name.

A later method adds its module and one line to the registration below.
"""

from __future__ import annotations

from reidctl.methods.base import Batch, EpochData, Method, Refined, TrainParams
from reidctl.methods.cc import CCParams, ClusterContrast
from reidctl.methods.icrefine import Icrefine, IcrefineParams
from reidctl.methods.mar import MAR, MARParams
from reidctl.methods.ncplr import GLNCPLR, NCPLR, NCPLRParams
from reidctl.methods.pplr import PPLR, PPLRParams
from reidctl.methods.registry import METHODS, get_method

METHODS.update({
    "cc": ClusterContrast,
    "pplr": PPLR,
    "icrefine": Icrefine,
    "ncplr": NCPLR,
    "gl-ncplr": GLNCPLR,
    "mar": MAR,
})

__all__ = ["METHODS", "Batch", "CCParams", "ClusterContrast", "EpochData", "Icrefine", "IcrefineParams", "MAR", "MARParams", "Method",
           "NCPLR", "NCPLRParams", "PPLR", "PPLRParams", "Refined", "TrainParams", "get_method"]
