"""The agents: one learnt reference vector per source identity (ALGORITHMS.md §6.2).

They are the rows of a bias-free classifier over the source identities, used L2-normalised:
a feature's cosine to every agent is its similarity profile, and the softmax of that profile
(scale 30) its soft multilabel. Pretraining learns them with a normalised softmax; MAR keeps
learning them on the source (L_AL). They are trainer *heads*: optimised and saved with the
model, continued by MAR from a ``pretrain`` checkpoint, ignored by every other method.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn

from reidctl.errors import ArtifactError


class AgentClassifier(nn.Module):
    """``weight``: K×C agents (rows of a bias-free linear layer); ``pids``: the source pid of
    each row, so that a MAR run can refuse agents of another source."""

    def __init__(self, channels: int, pids: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(len(pids), channels))
        # nn.Linear's initialisation (rows of norm ≈ 0.58). The rows are used normalised, so their
        # gradient scales with 1/‖row‖: tiny rows (std 0.001, ‖row‖ ≈ 0.04) made the first epoch's
        # SGD steps turn the agents around at random (loss 13.4 > ln 971 on cuhk01).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.register_buffer("pids", torch.as_tensor(pids, dtype=torch.int64).clone())

    def forward(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The raw agent weights travel with the outputs (the losses normalise them), so the
        agents are used inside the trainer's forward pass (DDP sees them used)."""
        return {"agents": self.weight}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Refuse, in one line, agents learnt on other identities than this source's."""
        pids = state_dict.get("pids")
        if pids is not None:
            self.check_source(pids, "the checkpoint")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def check_source(self, pids: torch.Tensor, source: str) -> None:
        """Refuse agents whose identities are not the given source's (another dataset or split)."""
        pids = torch.as_tensor(pids, dtype=torch.int64)
        if len(pids) != len(self.pids) or not torch.equal(pids, self.pids.cpu()):
            raise ArtifactError(f"{source}: its {len(pids)} agents belong to another source than --aux-data, whose "
                                f"{len(self.pids)} identities these agents must be; pretrain on the same dataset and "
                                "--aux-splits")

