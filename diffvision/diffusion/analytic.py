"""Analytic-DPM: the optimal reverse variance, estimated from a trained noise model.

Bao, Li, Zhu & Zhang, "Analytic-DPM: an Analytic Estimate of the Optimal Reverse Variance in
Diffusion Probabilistic Models", ICLR 2022. Notation (theirs, on a possibly strided trajectory
... → n → n-1 → ..., i.e. t_n = ``t``, t_{n-1} = ``t_prev``):

    β̄_n = 1 - ᾱ_n,  α_n = ᾱ_n / ᾱ_{n-1} (the step's α),  λ²_n = β̄_{n-1} / β̄_n · (1 - α_n)

λ²_n is the DDPM posterior variance β̃ (Ho et al. 2020 eq. 7, strided). Theorem 1 gives the
optimal variance of a Gaussian reverse step with the DDPM (posterior) mean as

    σ*²_n = λ²_n + (√(β̄_n / α_n) - √(β̄_{n-1} - λ²_n))² · (1 - β̄_n E‖∇log q_n(x_n)‖² / d).

With the score ∇log q_n(x_n) ≈ -ε_θ(x_n, n) / √β̄_n the last factor is 1 - Γ_n, where

    Γ_n = E_{x_0, ε} ‖ε_θ(√ᾱ_n x_0 + √β̄_n ε, n)‖² / d

is estimated once per timestep by Monte Carlo on training data (:func:`estimate_analytic_gamma`).
(Γ_n already contains the factor β̄_n of the score form, so it does not appear again.) Theorem 2
bounds σ*²_n between λ²_n (Γ_n = 1) and λ²_n + (√(β̄_n / α_n) - √(β̄_{n-1} - λ²_n))² (Γ_n = 0);
like the paper, the estimate is clipped to these bounds.

For data N(0, s² I) the optimal ε-model gives Γ_n = β̄_n / (ᾱ_n s² + β̄_n) and σ*²_n equals the
exact conditional variance Var(x_{n-1} | x_n) = β_n v_{n-1} / v_n with v_k = ᾱ_k s² + β̄_k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._utils import Coef, Timestep, as_timesteps, clamp_min, sqrt, step_alpha_bars
from .base import randn_like
from .forward import add_noise
from .parameterization import PredictionType, predict_x0_eps
from .schedule import NoiseSchedule

__all__ = ["analytic_variance", "estimate_analytic_gamma", "optimal_variance"]

ModelFn = Callable[[Tensor, Tensor], Tensor]


def optimal_variance(a_t: Coef, a_prev: Coef, gamma: Coef) -> Coef:
    """σ*² of Bao et al. 2022 (Theorem 1, clipped per Theorem 2) from ᾱ values.

    Args:
        a_t: ᾱ_n (python float or float64 tensor of any broadcastable shape).
        a_prev: ᾱ_{n-1} (ᾱ of the step's target; 1 at the clean end).
        gamma: Γ_n = E‖ε_θ(x_n, n)‖² / d, float or float64 tensor broadcastable with ``a_t``.

    Returns:
        σ*²_n in float64 (a python float if all inputs are floats), broadcast shape of the inputs.
    """
    alpha = a_t / a_prev  # α_n
    lam2 = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - alpha)  # λ²_n = β̃
    gap2 = (sqrt((1.0 - a_t) / alpha) - sqrt(clamp_min(1.0 - a_prev - lam2))) ** 2
    # Theorem 2 bounds <=> 0 <= 1 - Γ_n <= 1
    one_minus_gamma = 1.0 - gamma
    if isinstance(one_minus_gamma, Tensor):
        one_minus_gamma = one_minus_gamma.clamp(0.0, 1.0)
    else:
        one_minus_gamma = min(max(one_minus_gamma, 0.0), 1.0)
    return lam2 + gap2 * one_minus_gamma


def analytic_variance(
    schedule: NoiseSchedule, t: Timestep, t_prev: Timestep, gamma: Tensor | float
) -> Tensor:
    """Analytic-DPM's optimal variance σ*² for the step ``t`` → ``t_prev`` (module docstring).

    Args:
        schedule: The noise schedule.
        t: int or (B,) timesteps n.
        t_prev: int or (B,) earlier timesteps (negative = the clean end).
        gamma: Γ_n at ``t`` (float, 0-d or (B,) tensor), from :func:`estimate_analytic_gamma`.

    Returns:
        0-d or (B,) float64 σ*²_n, between the DDPM variances β̃ and β̃ + (...)² (Theorem 2).
    """
    t = as_timesteps(t, schedule.device)
    t_prev = as_timesteps(t_prev, schedule.device)
    ref = torch.empty(torch.broadcast_shapes(t.shape, t_prev.shape), dtype=torch.float64)
    a_t, a_prev = step_alpha_bars(schedule, t, t_prev, ref)
    return optimal_variance(a_t, a_prev, torch.as_tensor(gamma, dtype=torch.float64))


@torch.no_grad()
def estimate_analytic_gamma(
    model_fn: ModelFn,
    data_x0: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    *,
    batch_size: int | None = None,
    num_repeats: int = 1,
    prediction_type: PredictionType = "epsilon",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Monte-Carlo estimate of Γ_n = E‖ε_θ(x_n, n)‖² / d at each of ``timesteps`` (Bao et al.).

    Args:
        model_fn: ``model_fn(x_t, t)`` with t a (B,) long tensor of *original* timesteps
            (``schedule.timestep_map`` is applied here), returning a ``prediction_type`` output.
        data_x0: (M, ...) samples of the training data.
        schedule: The noise schedule.
        timesteps: Indices n into ``schedule`` at which to estimate Γ_n.
        batch_size: Data chunk per model call (all of ``data_x0`` if None).
        num_repeats: Passes over ``data_x0`` with fresh noise.
        prediction_type: What the model predicts; it is converted to ε̂ first.
        generator: Seeds the noise draws.

    Returns:
        (len(timesteps),) float64 Γ_n, aligned with ``timesteps``.
    """
    timesteps = as_timesteps(timesteps, torch.device("cpu")).flatten()
    batch_size = batch_size or data_x0.shape[0]
    dim = data_x0[0].numel()
    gammas = torch.zeros(timesteps.numel(), dtype=torch.float64)
    for k, n in enumerate(timesteps.tolist()):
        total, count = 0.0, 0
        for _ in range(num_repeats):
            for x0 in data_x0.split(batch_size):
                noise = randn_like(x0, generator)
                x_t = add_noise(schedule, x0, noise, n)
                t_model = schedule.timestep_map[n].to(x0.device).repeat(x0.shape[0])
                output = model_fn(x_t, t_model)
                _, eps = predict_x0_eps(schedule, output, x_t, n, prediction_type)
                total += eps.double().pow(2).flatten(1).sum(1).div(dim).sum().item()
                count += x0.shape[0]
        gammas[k] = total / count
    return gammas
