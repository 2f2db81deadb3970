"""NCPLR / GL-NCPLR (ALGORITHMS.md §7): the method (:mod:`.method`), its neighbour sets and
in-batch ensembles (:mod:`.neighbours`) and its refined targets (:mod:`.targets`)."""

from reidctl.methods.ncplr.method import GLNCPLR, NCPLR, GLNCPLRParams, NCPLRParams, NCPLRRefineOptions

__all__ = ["GLNCPLR", "GLNCPLRParams", "NCPLR", "NCPLRParams", "NCPLRRefineOptions"]
