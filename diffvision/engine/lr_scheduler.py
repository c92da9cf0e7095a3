"""Learning-rate schedules with linear/constant warm-up, as multiplicative factors of the base LR.

``lr(it) = base_lr · warmup(it) · main(it)`` where ``warmup`` ramps linearly from
``warmup_factor`` to 1 over ``warmup_iters`` (detectron2's ``WarmupMultiStepLR`` convention:
``factor = warmup_factor·(1 − α) + α`` with ``α = it / warmup_iters``) and ``main`` is one of
multistep (×gamma at each milestone), cosine (to ``end_factor``) or poly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["lr_factor", "make_lr_scheduler"]

ScheduleName = Literal["multistep", "cosine", "poly"]
_SCHEDULES = ("multistep", "cosine", "poly")


def lr_factor(
    it: int,
    *,
    schedule: ScheduleName,
    max_iter: int,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    end_factor: float = 0.0,
    poly_power: float = 0.9,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
    warmup_method: Literal["linear", "constant"] = "linear",
) -> float:
    """Multiplier of the base learning rate at iteration ``it`` (0-based)."""
    if schedule == "multistep":
        main = gamma ** sum(1 for s in steps if s <= it)
    elif schedule == "cosine":
        progress = min(it, max_iter) / max(max_iter, 1)
        main = end_factor + (1.0 - end_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "poly":
        main = (1.0 - min(it, max_iter) / max(max_iter, 1)) ** poly_power
    else:
        raise ValueError(f"Unknown LR schedule '{schedule}'; expected one of {_SCHEDULES}.")
    if it < warmup_iters:
        if warmup_method == "linear":
            alpha = it / warmup_iters
            warm = warmup_factor * (1.0 - alpha) + alpha
        elif warmup_method == "constant":
            warm = warmup_factor
        else:
            raise ValueError(
                f"Unknown warmup method '{warmup_method}'; expected 'linear' or 'constant'."
            )
        main *= warm
    return main


def make_lr_scheduler(optimizer: torch.optim.Optimizer, **kwargs) -> LambdaLR:
    """A ``LambdaLR`` stepping once per iteration with :func:`lr_factor` (same kwargs)."""
    lr_factor(0, **kwargs)  # validate names early

    def factor(it: int) -> float:
        return lr_factor(it, **kwargs)

    return LambdaLR(optimizer, factor)
