"""Schedules and target-network averaging shared by the offline algorithms (dtr.py, iql.py)."""

from __future__ import annotations

import math

import torch
from torch import nn


def ramp(step: int, total: int) -> float:
    """A weight rising linearly from 0 at step 0 to 1 at `total` (DTR's c(step) of the Q term)."""
    return min(step / total, 1.0)


def cosine_factor(step: int, total: int) -> float:
    """The learning rate's factor at `step` of a cosine decay to 0 over `total` steps."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step / total, 1.0)))


@torch.no_grad()
def soft_update_(target: nn.Module, source: nn.Module, rate: float) -> None:
    """target ← (1 - rate) target + rate source, parameter by parameter (Polyak: rate τ; EMA: rate 1 - decay)."""
    for p_target, p in zip(target.parameters(), source.parameters()):
        p_target.lerp_(p, rate)
