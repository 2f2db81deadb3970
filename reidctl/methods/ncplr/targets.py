"""NCPLR's refined targets and refinement loss (ALGORITHMS.md §7.4–7.6, ``RefineLabels.forward``
with ``extra-option 2``).

Plain NCPLR: ``ŷ = α·onehot(y) + (1−α)·e_g``. GL-NCPLR lets the global and part ensembles
inform each other, weighted by how much they agree: the global ensemble takes in each part's
with weight ``exp(−KL(e_g‖e_p)/T_KL)``, each part's takes in the global one with weight
``exp(−KL(e_p‖e_g)/T_KL)``; the part targets use α_c. All ensembles are detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reidctl.train.losses import soft_cross_entropy


def kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``KL(p‖q)`` of each row, as the official ``KLDivLoss(reduction='none')(log q, p).sum(1)``
    computes it (0·log 0 = 0; a zero in q where p is positive gives +inf)."""
    return F.kl_div(torch.log(q), p, reduction="none").sum(1)


def agreement_weight(reference: torch.Tensor, other: torch.Tensor, temperature: float) -> torch.Tensor:
    """``exp(−KL(reference‖other)/T_KL)`` as a column (B×1)."""
    return torch.exp(-kl_rows(reference, other) / temperature)[:, None]


def plain_target(e_g: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """``α·onehot(y) + (1−α)·e_g``."""
    onehot = F.one_hot(labels, e_g.shape[1]).to(e_g.dtype)
    return alpha * onehot + (1.0 - alpha) * e_g


def global_local_targets(e_g: torch.Tensor, e_parts: list[torch.Tensor], labels: torch.Tensor, *,
                         alpha: float, cmalpha: float, temperature: float) -> list[torch.Tensor]:
    """The global target, then one per part (§7.5)."""
    onehot = F.one_hot(labels, e_g.shape[1]).to(e_g.dtype)
    w = [agreement_weight(e_g, e_p, temperature) for e_p in e_parts]
    mixed = (e_g + sum(wi * e_p for wi, e_p in zip(w, e_parts))) / (1.0 + sum(w))
    targets = [alpha * onehot + (1.0 - alpha) * mixed]
    for e_p in e_parts:
        w_p = agreement_weight(e_p, e_g, temperature)
        targets.append(cmalpha * onehot + (1.0 - cmalpha) * (e_p + w_p * e_g) / (1.0 + w_p))
    return targets


def branch_weights(branches: int, lambda2: float) -> list[float]:
    """``[1]`` for the global branch alone, else ``[1−λ2, λ2, λ2, …]`` (summing to 1.2 for two
    parts at λ2 = 0.2, as the official code weights them)."""
    return [1.0] if branches == 1 else [1.0 - lambda2] + [lambda2] * (branches - 1)


def refine_loss(logits: list[torch.Tensor], targets: list[torch.Tensor], lambda2: float) -> torch.Tensor:
    """``Σ_b weight_b · CE(ŷ_b, logits_b)`` with :func:`branch_weights`."""
    return sum(w * soft_cross_entropy(lg, t) for w, lg, t in zip(branch_weights(len(logits), lambda2), logits, targets))
