"""Optimiser and schedule builders that more than one method uses (MAR and its pretraining).

MAR's official code (ALGORITHMS.md §6.4) trains with SGD whose BatchNorm parameters get no weight
decay, and a ``MultiStepLR`` at 5/8 and 7/8 of the run that is stepped at the *start* of each
epoch. Under the authors' PyTorch 1.0.0 the lr dropped at the milestones themselves (epochs 12
and 17 of 20: their published numbers); with PyTorch ≥ 1.1 the same code drops each one epoch
earlier (11 and 16). :data:`LR_DROPS` names the two.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LRScheduler, MultiStepLR

from reidctl.train.contract import positioned, trainable_parameters


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def sgd_no_bn_decay(modules: tuple[nn.Module | None, ...], *, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.SGD:
    """SGD with two parameter groups: every trainable parameter outside BatchNorm layers with
    ``weight_decay``, the BatchNorm weights and biases with none (in that order)."""
    bn = {id(p) for m in modules if m is not None for mod in m.modules() if is_batchnorm(mod)
          for p in mod.parameters()}
    trainable = trainable_parameters(*modules)
    return torch.optim.SGD([
        {"params": [p for p in trainable if id(p) not in bn], "weight_decay": weight_decay},
        {"params": [p for p in trainable if id(p) in bn], "weight_decay": 0.0},
    ], lr=lr, momentum=momentum)


def official_milestones(epochs: int) -> list[int]:
    """MAR's milestones for a run of ``epochs``: ``[int(E/8·5), int(E/8·7)]`` (20 → [12, 17])."""
    return [int(epochs / 8 * 5), int(epochs / 8 * 7)]


#: When a start-of-epoch MultiStepLR drops the lr: ``milestones`` (at each milestone epoch, as
#: PyTorch 1.0.0 ran MAR's loop) or ``early`` (one epoch before, as PyTorch ≥ 1.1 runs it).
LR_DROPS = ("milestones", "early")


def multistep_at_epoch_start(optimizer: torch.optim.Optimizer, epoch: int, milestones: list[int],
                             gamma: float, drops: str = "early") -> LRScheduler:
    """The lr of ``epoch`` under a MultiStepLR that is stepped once at the start of every epoch, as
    MAR's training loop steps it: positioned ``epoch + 1`` steps in (``drops="early"``, PyTorch
    ≥ 1.1), or ``epoch`` steps (``"milestones"``: the lr of epoch e has dropped once for each
    milestone ≤ e, as under PyTorch 1.0.0, whose scheduler started one step behind)."""
    if drops not in LR_DROPS:
        raise ValueError(f"drops must be one of {LR_DROPS}, not {drops!r}")
    return positioned(MultiStepLR(optimizer, milestones=milestones, gamma=gamma),
                      epoch + 1 if drops == "early" else epoch)
