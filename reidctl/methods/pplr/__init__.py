"""PPLR, Part-based Pseudo Label Refinement (Cho et al., CVPR 2022): the method (:mod:`.method`)
and its losses (:mod:`.losses`)."""

from reidctl.methods.pplr.method import PPLR, PPLRHeads, PPLRParams, cross_agreement, list_jaccard, top_k_lists

__all__ = ["PPLR", "PPLRHeads", "PPLRParams", "cross_agreement", "list_jaccard", "top_k_lists"]
