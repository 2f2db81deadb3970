"""PPLR's own losses (ALGORITHMS.md §4.4-4.5): the part-guided global target (PGLR), the
agreement-aware label smoothing of the parts (AALS). Plain functions of tensors, checked by hand
in tests/test_pplr.py. The camera-aware proxy loss of ``train_pplr_cam.py`` is the trainer's, for
any method (:mod:`reidctl.train.camera`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def agreement_weights(agreement: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-sample part weights ``softmax_p(S_ip / T)`` (B×P). With T = 1, as the official code
    runs it, the weights stay close to 1/P (about 0.16–0.58 for P = 3)."""
    return torch.softmax(agreement.float() / temperature, dim=-1)


def pglr_target(labels: torch.Tensor, part_logits: torch.Tensor, agreement: torch.Tensor, beta: float = 0.5,
                temperature: float = 1.0) -> torch.Tensor:
    """PGLR's refined global target ``β·onehot(y) + (1−β)·Σ_p w_p·softmax(part logits_p)`` (B×K).

    ``part_logits`` is B×P×K, ``agreement`` B×P. The part ensemble is detached: the global
    branch learns from the parts, not the other way round.
    """
    k = part_logits.shape[-1]
    w = agreement_weights(agreement, temperature)  # B×P
    ensemble = (w.unsqueeze(-1) * torch.softmax(part_logits.detach().float(), dim=-1)).sum(1)
    return beta * F.one_hot(labels, k).float() + (1.0 - beta) * ensemble


def aals_loss(part_logits: torch.Tensor, labels: torch.Tensor, agreement: torch.Tensor) -> torch.Tensor:
    """AALS: per part ``S·CE(onehot(y), p) + (1−S)·KL(u ‖ p)``, averaged over samples and parts.

    ``u`` is uniform over the K classes; ``KL(u‖p) = −log K − mean_k log p_k`` differs from
    ``CE(u, p)`` by the constant ``log K`` (same gradients), and it is what the official code reports.
    """
    k = part_logits.shape[-1]
    logp = F.log_softmax(part_logits.float(), dim=-1)  # B×P×K
    ce = -logp.gather(-1, labels[:, None, None].expand(-1, logp.shape[1], 1)).squeeze(-1)  # B×P
    kl_uniform = -math.log(k) - logp.mean(-1)  # B×P
    s = agreement.float()
    return (s * ce + (1.0 - s) * kl_uniform).mean()
