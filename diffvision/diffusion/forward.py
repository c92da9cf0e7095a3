"""The forward (noising) process q(x_t | x_0) and the posterior q(x_{t-1} | x_t, x_0).

Ho et al. 2020, "Denoising Diffusion Probabilistic Models": eq. 4 (closed-form marginal) and
eq. 6-7 (posterior). Works on tensors of any shape (B, ...), float32 or float64.
"""

from __future__ import annotations

from torch import Tensor

from ._utils import Coef, Timestep, alpha_bar, as_timesteps, cast, sqrt, step_alpha_bars
from .schedule import NoiseSchedule

__all__ = ["add_noise", "posterior_mean_variance"]


def add_noise(schedule: NoiseSchedule, x0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
    """Sample x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I) (Ho et al. 2020, eq. 4).

    Args:
        schedule: The noise schedule.
        x0: (B, ...) clean data.
        noise: (B, ...) standard Gaussian ε, same shape as ``x0``.
        t: int or (B,) integer timesteps in [0, T), one per batch element.

    Returns:
        (B, ...) x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε, in the dtype of ``x0``.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    if bool((as_timesteps(t, schedule.device) < 0).any()):
        raise ValueError(f"timesteps t must be >= 0, got {t}")
    a_t = alpha_bar(schedule, t, x0)
    return cast(sqrt(a_t), x0) * x0 + cast(sqrt(1.0 - a_t), x0) * noise


def posterior_mean_variance(
    schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Timestep, t_prev: Timestep
) -> tuple[Tensor, Coef]:
    """Mean and variance of q(x_{t'} | x_t, x_0) for any earlier t' = ``t_prev`` < t.

    With the step's α = ᾱ_t / ᾱ_{t'} and β = 1 - α (β = β_t when t' = t - 1), Ho et al. 2020 eq. 7:

        μ̃ = √ᾱ_{t'} β / (1 - ᾱ_t) · x_0 + √α (1 - ᾱ_{t'}) / (1 - ᾱ_t) · x_t
        β̃ = (1 - ᾱ_{t'}) / (1 - ᾱ_t) · β

    ``t_prev < 0`` stands for the clean end (ᾱ = 1): μ̃ = x_0 and β̃ = 0.

    Args:
        schedule: The noise schedule.
        x0: (B, ...) (predicted) clean data.
        x_t: (B, ...) current sample.
        t: int or (B,) timesteps in [0, T).
        t_prev: int or (B,) earlier timesteps, < t (negative = the clean end).

    Returns:
        ``(mean, variance)``: mean (B, ...) in the dtype of ``x_t``; variance in float64, a
        python float for int timesteps, else a 0-d or (B, 1, ..., 1) tensor.
    """
    a_t, a_prev = step_alpha_bars(schedule, t, t_prev, x_t)
    alpha = a_t / a_prev
    beta = 1.0 - alpha
    coef_x0 = sqrt(a_prev) * beta / (1.0 - a_t)
    coef_xt = sqrt(alpha) * (1.0 - a_prev) / (1.0 - a_t)
    mean = cast(coef_x0, x_t) * x0 + cast(coef_xt, x_t) * x_t
    variance = (1.0 - a_prev) / (1.0 - a_t) * beta
    return mean, variance
