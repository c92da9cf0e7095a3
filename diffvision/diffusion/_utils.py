"""Private helpers: index per-timestep coefficients and broadcast them against a tensor.

Coefficients stay float64 until the last moment; callers cast the final coefficient to the
dtype of the tensor it multiplies (:func:`cast`). A python-int timestep gives python-float
coefficients (float64 too): a sampling loop then spends its time in the model, not in dozens of
0-d tensor operations per step. The helpers ``sqrt``, ``clamp_min``, ``log`` and ``cast`` accept
either kind, so every formula is written once.
"""

from __future__ import annotations

import math
from numbers import Integral

import torch
from torch import Tensor

from .schedule import NoiseSchedule

__all__ = [
    "Coef",
    "Timestep",
    "alpha_bar",
    "as_timesteps",
    "broadcast_to",
    "cast",
    "clamp_min",
    "extract",
    "log",
    "sqrt",
    "step_alpha_bars",
]

Timestep = int | Tensor
"""A timestep argument: a python int, a 0-d tensor, or a (B,) integer tensor (one per element)."""

Coef = float | Tensor
"""A float64 coefficient: a python float (scalar timestep) or a float64 tensor."""


def sqrt(v: Coef) -> Coef:
    return v.sqrt() if isinstance(v, Tensor) else math.sqrt(v)


def log(v: Coef) -> Coef:
    if isinstance(v, Tensor):
        return v.log()
    return math.log(v) if v > 0 else -math.inf


def clamp_min(v: Coef, lo: float = 0.0) -> Coef:
    return v.clamp(min=lo) if isinstance(v, Tensor) else max(v, lo)


def cast(v: Coef, x: Tensor) -> Coef:
    """The coefficient in ``x``'s dtype (python floats multiply any tensor without a cast)."""
    return v.to(x.dtype) if isinstance(v, Tensor) else v


@torch.compiler.assume_constant_result  # under torch.export: a constant of the graph
def _value_at(values: Tensor, t: int) -> float:
    """``values[t]`` as a python float (the coefficient of a python-int timestep)."""
    return float(values[t])


def _is_int(t: object) -> bool:
    return isinstance(t, Integral) and not isinstance(t, bool)


def as_timesteps(t: Timestep, device: torch.device) -> Tensor:
    """Return ``t`` as a 0-d or 1-d long tensor on ``device``."""
    t = torch.as_tensor(t, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
    if t.ndim > 1:
        raise ValueError(f"timesteps must be an int or a (B,) tensor, got shape {tuple(t.shape)}")
    return t.long()


def broadcast_to(values: Tensor, x: Tensor) -> Tensor:
    """Reshape 0-d or (B,) ``values`` so that they broadcast over ``x`` (B, ...) from the left."""
    if values.ndim == 0:
        return values.to(x.device)
    if values.shape[0] != x.shape[0] and values.shape[0] != 1:
        raise ValueError(
            f"per-element timesteps of shape {tuple(values.shape)} do not match the batch "
            f"dimension of x {tuple(x.shape)}"
        )
    return values.to(x.device).reshape(values.shape[0], *([1] * (x.ndim - 1)))


def extract(values: Tensor, t: Timestep, x: Tensor) -> Coef:
    """Gather ``values[t]`` (float64) and shape it to broadcast over ``x``.

    Args:
        values: (T,) per-timestep table (e.g. ``schedule.betas``).
        t: int, 0-d or (B,) integer tensor with entries in [0, T).
        x: (B, ...) the tensor the result will multiply.

    Returns:
        A python float for an int ``t``, else a 0-d or (B, 1, ..., 1) float64 tensor on
        ``x.device``.
    """
    if _is_int(t):
        if not 0 <= t < values.numel():
            raise ValueError(f"timesteps must lie in [0, {values.numel()}), got {t}")
        return _value_at(values, t)
    t = as_timesteps(t, values.device)
    if bool(((t < 0) | (t >= values.numel())).any()):
        raise ValueError(f"timesteps must lie in [0, {values.numel()}), got {t.tolist()}")
    return broadcast_to(values[t], x)


def alpha_bar(schedule: NoiseSchedule, t: Timestep, x: Tensor) -> Coef:
    """ᾱ_t (float64) broadcast over ``x``, with ᾱ_t = 1 for t < 0 (the clean end of the chain).

    A python float for an int ``t``, else a 0-d or (B, 1, ..., 1) tensor.
    """
    if _is_int(t):
        if t >= schedule.num_timesteps:
            raise ValueError(f"timesteps must be < {schedule.num_timesteps}, got {t}")
        return 1.0 if t < 0 else _value_at(schedule.alphas_cumprod, t)
    t = as_timesteps(t, schedule.device)
    if bool((t >= schedule.num_timesteps).any()):
        raise ValueError(f"timesteps must be < {schedule.num_timesteps}, got {t.tolist()}")
    values = schedule.alphas_cumprod[t.clamp(min=0)]
    values = torch.where(t < 0, torch.ones_like(values), values)
    return broadcast_to(values, x)


def step_alpha_bars(
    schedule: NoiseSchedule, t: Timestep, t_prev: Timestep, x: Tensor
) -> tuple[Coef, Coef]:
    """(ᾱ_t, ᾱ_{t_prev}) for a reverse step t → t_prev, validated and broadcast over ``x``.

    Requires 0 <= t < T and t_prev < t (t_prev < 0 means the clean end, ᾱ = 1).
    """
    if _is_int(t) and _is_int(t_prev):
        if t < 0:
            raise ValueError(f"timesteps t must be >= 0, got {t}")
        if t_prev >= t:
            raise ValueError(f"t_prev must be < t, got t={t}, t_prev={t_prev}")
        return alpha_bar(schedule, t, x), alpha_bar(schedule, t_prev, x)
    t_ = as_timesteps(t, schedule.device)
    t_prev_ = as_timesteps(t_prev, schedule.device)
    if bool((t_ < 0).any()):
        raise ValueError(f"timesteps t must be >= 0, got {t_.tolist()}")
    if bool((t_prev_ >= t_).any()):
        raise ValueError(f"t_prev must be < t, got t={t_.tolist()}, t_prev={t_prev_.tolist()}")
    return alpha_bar(schedule, t_, x), alpha_bar(schedule, t_prev_, x)
