"""DDPM ancestral sampling: x_{t'} ~ N(μ̃(x_t, x̂_0), σ² I), optionally strided.

Ho et al. 2020, "Denoising Diffusion Probabilistic Models": the reverse step uses the posterior
mean μ̃ of eq. 7 with x̂_0 from the model (eq. 11 in the ε form) and a fixed variance, β̃_t
(``fixed_small``) or β_t (``fixed_large``) (Sec. 3.2). Skipping timesteps (t' < t - 1) uses the
step's α = ᾱ_t / ᾱ_{t'}, exactly like sampling a schedule respaced to the visited timesteps (Nichol
& Dhariwal 2021, Sec. 4). ``analytic`` uses the optimal variance of Bao et al. 2022 (see
:mod:`diffvision.diffusion.analytic`); ``learned`` the model's own interpolated variance
Σ_θ = exp(v log β + (1 − v) log β̃) of the step (Nichol & Dhariwal 2021, eq. 15).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ._utils import (
    Timestep,
    as_timesteps,
    broadcast_to,
    cast,
    clamp_min,
    log,
    sqrt,
    step_alpha_bars,
)
from .analytic import optimal_variance
from .base import StepOutput, resolve_timesteps
from .parameterization import PredictionType, check_prediction_type, predict_x0_eps
from .schedule import NoiseSchedule
from .timesteps import Spacing, previous_timesteps

__all__ = ["VARIANCES", "DDPMSampler", "Variance", "ddpm_step", "learned_log_variance"]

Variance = Literal["fixed_small", "fixed_large", "analytic", "learned"]
VARIANCES: tuple[str, ...] = ("fixed_small", "fixed_large", "analytic", "learned")


def _check_variance(variance: str, analytic_gamma: object) -> None:
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; expected one of {list(VARIANCES)}")
    if variance == "analytic" and analytic_gamma is None:
        raise ValueError("variance='analytic' needs analytic_gamma (see estimate_analytic_gamma)")


def learned_log_variance(
    v_raw: Tensor, *, log_beta: Tensor | float, log_posterior_variance_clipped: Tensor | float
) -> Tensor:
    """Interpolated log-variance of p_θ(x_{t'}|x_t) (Nichol & Dhariwal 2021, eq. 15).

    Args:
        v_raw: ``(B, C, ...)`` raw network output in roughly [-1, 1].
        log_beta: log β of the step, broadcastable to ``v_raw`` (the upper bound, "fixed_large").
        log_posterior_variance_clipped: log β̃ of the step (the lower bound, "fixed_small").

    Returns:
        log Σ_θ = v log β + (1 − v) log β̃ with v = (v_raw + 1) / 2, shaped like ``v_raw``.
    """
    frac = (v_raw + 1.0) / 2.0
    return frac * log_beta + (1.0 - frac) * log_posterior_variance_clipped


def ddpm_step(
    schedule: NoiseSchedule,
    model_output: Tensor,
    x_t: Tensor,
    t: Timestep,
    t_prev: Timestep,
    *,
    noise: Tensor | None = None,
    variance: Variance = "fixed_small",
    prediction_type: PredictionType = "epsilon",
    clip: float | None = None,
    analytic_gamma: Tensor | float | None = None,
    model_variance: Tensor | None = None,
) -> StepOutput:
    """One ancestral step x_t → x_{t_prev} from the posterior q(x_{t'} | x_t, x̂_0).

    Notation: ᾱ_t → ``a_t``, ᾱ_{t'} → ``a_prev``, the step's α = ᾱ_t / ᾱ_{t'} and β = 1 - α.

    Args:
        schedule: The noise schedule.
        model_output: (B, ...) model output at (x_t, t), of type ``prediction_type``.
        x_t: (B, ...) current sample (any shape, float32 or float64).
        t: int or (B,) current timesteps in [0, T).
        t_prev: int or (B,) target timesteps, < t (t - 1 for plain DDPM); negative means the
            clean end, where the step returns x̂_0 and adds no noise.
        noise: (B, ...) Gaussian z (drawn with ``torch.randn_like`` if None).
        variance: σ² of the step: ``fixed_small`` = β̃ = (1 - ᾱ_{t'}) / (1 - ᾱ_t) · β,
            ``fixed_large`` = β, ``analytic`` = Analytic-DPM's σ*² (needs ``analytic_gamma``),
            ``learned`` = exp(v log β + (1 − v) log β̃) (needs ``model_variance``).
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
        clip: If set, clamp x̂_0 to [-clip, clip] before forming the posterior mean.
        analytic_gamma: Γ at ``t`` (float, 0-d or (B,)), for ``variance="analytic"``.
        model_variance: (B, ...) the raw variance channels v_raw of the model (the second half
            of a learned-sigma UNet's output), for ``variance="learned"``.

    Returns:
        ``StepOutput(prev_sample, pred_x0)``, each (B, ...) in x_t's dtype.
    """
    check_prediction_type(prediction_type)
    _check_variance(variance, analytic_gamma)
    if (variance == "learned") != (model_variance is not None):
        raise ValueError("model_variance is needed exactly when variance='learned'")
    # 1. ᾱ at both ends of the step and the step's α, β
    a_t, a_prev = step_alpha_bars(schedule, t, t_prev, x_t)
    alpha = a_t / a_prev
    beta = 1.0 - alpha
    # 2. x̂_0 from the model (eq. 11 / 15 of Ho et al.), optionally clipped
    x0, _ = predict_x0_eps(schedule, model_output, x_t, t, prediction_type)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    # 3. posterior mean μ̃(x_t, x̂_0) (eq. 7)
    coef_x0 = sqrt(a_prev) * beta / (1.0 - a_t)
    coef_xt = sqrt(alpha) * (1.0 - a_prev) / (1.0 - a_t)
    mean = cast(coef_x0, x_t) * x0 + cast(coef_xt, x_t) * x_t
    # 4. the step's variance σ²
    if variance == "fixed_small":
        var = (1.0 - a_prev) / (1.0 - a_t) * beta
    elif variance == "fixed_large":
        var = beta
    elif variance == "learned":
        log_tilde = log(clamp_min((1.0 - a_prev) / (1.0 - a_t) * beta, 1e-20))
        var = learned_log_variance(
            model_variance.double(), log_beta=log(beta), log_posterior_variance_clipped=log_tilde
        ).exp()
    else:
        gamma = analytic_gamma
        if isinstance(gamma, torch.Tensor):
            gamma = gamma.double()
            gamma = broadcast_to(gamma, x_t) if gamma.ndim else float(gamma)
        var = optimal_variance(a_t, a_prev, gamma)
    # 5. no noise on the final step (t' < 0: x_0 is returned as the mean, Ho et al. Alg. 2)
    if isinstance(t_prev, torch.Tensor):
        nonfinal = broadcast_to((as_timesteps(t_prev, schedule.device) >= 0).double(), x_t)
    else:
        nonfinal = float(t_prev >= 0)
    std = cast(sqrt(clamp_min(var)) * nonfinal, x_t)
    if noise is None:
        noise = torch.randn_like(x_t)
    return StepOutput(mean + std * noise, x0)


class DDPMSampler:
    """Ancestral (DDPM) sampling, over all T timesteps or a strided subset of them.

    Args:
        schedule: The noise schedule the model was trained with.
        num_steps: N model evaluations (T if None: plain DDPM, t' = t - 1).
        spacing: Timestep spacing for N < T (see :func:`make_timesteps`).
        variance: ``fixed_small``, ``fixed_large`` or ``analytic``.
        prediction_type: What the model predicts.
        clip: Optional clamp of x̂_0 to [-clip, clip].
        analytic_gamma: (N,) Γ aligned with :attr:`timesteps`, for ``variance="analytic"``
            (e.g. ``estimate_analytic_gamma(model_fn, data, schedule, sampler.timesteps)``).
        timesteps: Optional explicit (N,) descending grid in [0, T); replaces ``num_steps`` and
            ``spacing``.

    Attributes:
        timesteps: (N,) descending timesteps at which the model is evaluated.
        prev_timesteps: (N,) the target of each step; the last is -1 (the clean end).
    """

    stochastic = True

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        num_steps: int | None = None,
        spacing: Spacing = "trailing",
        variance: Variance = "fixed_small",
        prediction_type: PredictionType = "epsilon",
        clip: float | None = None,
        analytic_gamma: Tensor | None = None,
        timesteps: Tensor | None = None,
    ) -> None:
        check_prediction_type(prediction_type)
        _check_variance(variance, analytic_gamma)
        self.schedule = schedule
        self.variance = variance
        self.prediction_type = prediction_type
        self.clip = clip
        if num_steps is None and timesteps is None:
            num_steps = schedule.num_timesteps
        self.timesteps = resolve_timesteps(schedule.num_timesteps, num_steps, spacing, timesteps)
        self.prev_timesteps = previous_timesteps(self.timesteps)
        if analytic_gamma is not None:
            analytic_gamma = torch.as_tensor(analytic_gamma, dtype=torch.float64).flatten()
            if analytic_gamma.numel() != self.timesteps.numel():
                raise ValueError(
                    f"analytic_gamma has {analytic_gamma.numel()} entries; expected one per "
                    f"timestep ({self.timesteps.numel()})"
                )
        self.analytic_gamma = analytic_gamma

    @property
    def num_steps(self) -> int:
        return self.timesteps.numel()

    def step(
        self,
        model_output: Tensor,
        i: int,
        x_t: Tensor,
        *,
        noise: Tensor | None = None,
        model_variance: Tensor | None = None,
    ) -> StepOutput:
        """Take step ``i`` (0-based loop position): ``timesteps[i]`` → ``prev_timesteps[i]``.

        Args:
            model_output: (B, ...) model output at (x_t, timesteps[i]).
            i: Step index in [0, N).
            x_t: (B, ...) current sample.
            noise: Optional (B, ...) Gaussian z.
            model_variance: (B, ...) raw variance channels, for ``variance="learned"``.

        Returns:
            ``StepOutput(prev_sample, pred_x0)``.
        """
        gamma = None if self.analytic_gamma is None else self.analytic_gamma[i]
        return ddpm_step(
            self.schedule,
            model_output,
            x_t,
            int(self.timesteps[i]),
            int(self.prev_timesteps[i]),
            noise=noise,
            variance=self.variance,
            prediction_type=self.prediction_type,
            clip=self.clip,
            analytic_gamma=gamma,
            model_variance=model_variance,
        )

    def __repr__(self) -> str:
        return (
            f"DDPMSampler(num_steps={self.num_steps}, variance={self.variance!r}, "
            f"schedule={self.schedule})"
        )
