"""Inference timestep grids: which of the T training timesteps a sampler visits.

Spacings (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
and the DPM-Solver reference implementation), for T training steps and N sampling steps:

- ``leading``:  (N - 1 - k) · (T // N), k = 0..N-1 (DDIM / improved-diffusion "ddimN" strides).
- ``trailing``: round(T - k · T / N) - 1, k = 0..N-1 (always starts at T - 1).
- ``linspace``: round(linspace(0, T - 1, N)), descending (starts at T - 1, ends at 0).
- ``dpm_solver``: round(linspace(0, T - 1, N + 1)) descending, last entry dropped: the discrete
  time-uniform grid of DPM-Solver(++), whose final step goes on to the clean end (t = -1).
- ``diffusiondet``: int(linspace(-1, T - 1, N + 1)) in float32 (torch's linspace arithmetic),
  truncated toward zero, descending,
  the final -1 dropped: the official DiffusionDet grid (github.com/ShoufaChen/DiffusionDet
  ``detector.py`` ``ddim_sample``; N = 4 gives 999, 749, 499, 249).

Every sampler here ends its last step at t_prev = -1 (ᾱ = 1).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["SPACINGS", "Spacing", "make_timesteps", "previous_timesteps", "timestep_list"]

Spacing = Literal["leading", "trailing", "linspace", "dpm_solver", "diffusiondet"]
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace", "dpm_solver", "diffusiondet")


def make_timesteps(num_timesteps: int, num_steps: int, spacing: Spacing = "leading") -> Tensor:
    """Descending integer timesteps for an N-step sampler over a T-step schedule.

    Args:
        num_timesteps: T, the training schedule length.
        num_steps: N sampling steps, 1 <= N <= T (N <= T - 1 for ``dpm_solver``).
        spacing: ``leading``, ``trailing``, ``linspace``, ``dpm_solver`` or ``diffusiondet``
            (module docstring).

    Returns:
        (N,) LongTensor, strictly decreasing, entries in [0, T).

    Example:
        ``make_timesteps(1000, 10, "leading")`` is ``[900, 800, ..., 100, 0]`` and
        ``make_timesteps(1000, 10, "trailing")`` is ``[999, 899, ..., 199, 99]``.
    """
    return torch.tensor(timestep_list(int(num_timesteps), int(num_steps), spacing))


@torch.compiler.assume_constant_result  # ints in, ints out: a constant under torch.export
def timestep_list(T: int, N: int, spacing: Spacing) -> list[int]:
    """:func:`make_timesteps` as python ints.

    Samplers step with these: under ``torch.export`` (the ONNX export of DiffusionDet) a python
    int is a constant of the graph, an element of a tensor made while tracing is not.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {list(SPACINGS)}")
    if not 1 <= N <= T:
        raise ValueError(f"num_steps must be in [1, num_timesteps={T}], got {N}")
    if spacing == "leading":
        steps = np.arange(N - 1, -1, -1, dtype=np.int64) * (T // N)
    elif spacing == "trailing":
        # T - k·T/N rather than np.arange(T, 0, -T/N): a float step can yield N + 1 entries.
        steps = np.round(T - np.arange(N) * (T / N)).astype(np.int64) - 1
    elif spacing == "linspace":
        steps = np.round(np.linspace(0, T - 1, N))[::-1].astype(np.int64)
    elif spacing == "dpm_solver":
        steps = np.round(np.linspace(0, T - 1, N + 1))[::-1][:-1].astype(np.int64)
    else:
        steps = _float32_linspace(-1.0, T - 1.0, N + 1).astype(np.int64)[::-1][:-1]
    if N > 1 and not bool((np.diff(steps) < 0).all()):
        raise ValueError(f"num_steps={N} too large for spacing {spacing!r} with T={T}")
    return [int(v) for v in steps]


def _float32_linspace(start: float, end: float, num: int) -> np.ndarray:
    """``torch.linspace(start, end, num, dtype=torch.float32)`` in numpy float32 arithmetic.

    The official DiffusionDet grid truncates a float32 linspace, whose values sit just below an
    integer for some N; numpy's float64 linspace rounds differently. Written in numpy so that it
    also runs under ``torch.export`` tracing (the ONNX export), where tensors are fake. Equal to
    torch's kernel (step from the start for the first half, from the end for the second) for
    T = 1000 and every N (tests/diffusion/test_timestep_spacing.py).
    """
    a, b = np.float32(start), np.float32(end)
    step = np.float32((b - a) / np.float32(num - 1)) if num > 1 else np.float32(0)
    idx = np.arange(num)
    from_start = a + step * idx.astype(np.float32)
    from_end = b - step * (num - 1 - idx).astype(np.float32)
    return np.where(idx < num // 2, from_start, from_end).astype(np.float32)


def previous_timesteps(timesteps: Tensor) -> Tensor:
    """The step targets t_prev for a descending grid: ``timesteps[1:]`` followed by -1."""
    return torch.cat([timesteps[1:], timesteps.new_full((1,), -1)])
