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

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .timesteps import Spacing, make_timesteps

__all__ = ["StepOutput", "randn_like", "resolve_timesteps"]


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


def resolve_timesteps(
    num_timesteps: int,
    num_steps: int | None,
    spacing: Spacing,
    timesteps: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """The (N,) descending long grid a sampler visits: ``timesteps`` if given, else the spacing's.

    Args:
        num_timesteps: T of the schedule.
        num_steps: N for :func:`~diffvision.diffusion.timesteps.make_timesteps`; with explicit
            ``timesteps`` it may be None or must equal their length.
        spacing: Spacing for :func:`make_timesteps` (ignored with explicit ``timesteps``).
        timesteps: Optional explicit grid: 1-D integers, strictly decreasing, in [0, T).

    Returns:
        (N,) LongTensor on the CPU.
    """
    if timesteps is None:
        if num_steps is None:
            raise ValueError("give num_steps or an explicit timesteps grid")
        return make_timesteps(num_timesteps, num_steps, spacing)
    grid = torch.as_tensor(timesteps).detach().cpu()
    if grid.is_floating_point() or grid.is_complex() or grid.dtype == torch.bool:
        raise ValueError(f"timesteps must be integers, got dtype {grid.dtype}")
    grid = grid.long()
    if grid.ndim != 1 or grid.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(grid.shape)}")
    if not bool(((grid >= 0) & (grid < num_timesteps)).all()):
        raise ValueError(f"timesteps {grid.tolist()} must lie in [0, {num_timesteps})")
    if grid.numel() > 1 and not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"timesteps {grid.tolist()} must be strictly decreasing")
    if num_steps is not None and num_steps != grid.numel():
        raise ValueError(f"num_steps={num_steps} disagrees with {grid.numel()} explicit timesteps")
    return grid
