"""Classifiers whose rows are re-initialised every epoch with the cluster centroids.

Part-based refinement methods (ALGORITHMS.md §4.2, §7.1) put a bias-free ``Linear(C, rows)`` on
the BN-neck feature of the global branch and of each part, and at the start of every epoch
overwrite its first K rows (K = the epoch's clusters) with the normalised centroids of that
branch's features. Only ``[:K]`` is used for
the logits, ``BN(f)·w`` without temperature. The rows are overwritten in place, so the Adam
moments of the weight persist across epochs, as in the official codes.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F


class CentroidClassifiers(nn.Module):
    """A global classifier and one per part (``parts`` may be 0); ``rows`` caps K (3000 officially).

    ``forward(outputs)`` returns ``logits`` (B×K) and, with parts, ``part_logits`` (B×P×K).
    """

    def __init__(self, channels: int, parts: int, rows: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(channels, rows, bias=False)
        self.part_classifiers = nn.ModuleList(nn.Linear(channels, rows, bias=False) for _ in range(parts))
        for lin in (self.classifier, *self.part_classifiers):
            nn.init.normal_(lin.weight, std=0.001)
        self.active = rows  # K, set every epoch

    @torch.no_grad()
    def reset(self, centroids: torch.Tensor, part_centroids: list[torch.Tensor]) -> None:
        """Overwrite rows 0..K-1 in place (the Adam state of the parameters stays)."""
        k = len(centroids)
        self.classifier.weight[:k] = centroids.to(self.classifier.weight)
        for lin, c in zip(self.part_classifiers, part_centroids):
            lin.weight[:k] = c.to(lin.weight)
        self.active = k

    def forward(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        k = self.active
        logits = {"logits": F.linear(outputs["global"], self.classifier.weight[:k])}
        if self.part_classifiers:
            parts = outputs["parts"]
            logits["part_logits"] = torch.stack(
                [F.linear(parts[:, i], lin.weight[:k]) for i, lin in enumerate(self.part_classifiers)], 1)
        return logits
