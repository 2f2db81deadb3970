"""How likely a discard candidate is to be dropped at epoch e of E: the schedule p(e).

The released ICSR code drops every candidate (p = 1, ``none``, our default). Its commented-out
line is the ``cosine`` schedule; the paper also names linear and exponential decays without
their formulas, so ours (ALGORITHMS.md §5.5) share cosine's end points, p(0) = 1 and p(E) = 0.75:

* none:         p(e) = 1
* linear:       p(e) = 1 − e / (4E)
* exponential:  p(e) = 0.75^(e / E)
* cosine:       p(e) = ½ · (1 + cos(π·e / (3E)))
"""

from __future__ import annotations

import math

from reidctl.errors import ReidctlError

DECAYS = ("none", "linear", "exponential", "cosine")


def discard_probability(decay: str, epoch: int, epochs: int) -> float:
    """p(epoch) of the schedule ``decay`` over ``epochs`` epochs (epoch 0 is the first)."""
    if decay not in DECAYS:
        raise ReidctlError(f"--decay {decay}: choose one of {', '.join(DECAYS)}")
    if epochs < 1:
        raise ReidctlError("--epochs must be at least 1")
    if not 0 <= epoch <= epochs:
        raise ReidctlError(f"--epoch {epoch} must lie between 0 and --epochs {epochs}")
    t = epoch / epochs
    if decay == "none":
        return 1.0
    if decay == "linear":
        return 1.0 - t / 4.0
    if decay == "exponential":
        return 0.75**t
    return 0.5 * (1.0 + math.cos(math.pi * t / 3.0))
