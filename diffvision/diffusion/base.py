"""What every sampler shares: the step output and the conventions of a sampler object.

A sampler (``DDIMSampler``, ``DDPMSampler``, ``DPMSolverPPSampler``) is built from a
:class:`~diffvision.diffusion.schedule.NoiseSchedule` plus keyword options and is usable at once:

- ``timesteps``: (N,) descending LongTensor of the timesteps at which the model is evaluated;
  ``prev_timesteps``: (N,) the target of each step (the last is -1, the clean end, ᾱ = 1).
- ``step(model_output, i, x_t, ...)`` takes step ``i`` (a loop position, never a timestep lookup)
  and returns a :class:`StepOutput`. Nothing is stored between calls: a multistep solver receives
  its history explicitly and returns the updated one, so running twice gives the same answer.
- The model is called with the *original* timesteps ``schedule.timestep_map[timesteps[i]]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["StepOutput", "randn_like"]


class StepOutput(NamedTuple):
    """Result of one reverse step; unpacks as ``x_prev, x0_pred = output``.

    Attributes:
        prev_sample: (B, ...) x_{t_prev}.
        pred_x0: (B, ...) the x_0 prediction used for the step (after clipping, if any).
    """

    prev_sample: Tensor
    pred_x0: Tensor


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise with the shape, dtype and device of ``x``, drawn from ``generator``."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
