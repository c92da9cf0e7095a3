"""DDIM: the generalised (non-Markovian) reverse step of Song et al. 2021.

Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, eq. 12 and eq. 16:

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 - ᾱ_{t'} - σ²) ε̂ + σ z,
    σ = η √((1 - ᾱ_{t'}) / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_{t'}),

for any earlier timestep t' < t. η = 0 is the deterministic DDIM (a first-order solver of the
probability-flow ODE); η = 1 gives the DDPM posterior q(x_{t'} | x_t, x̂_0) with variance β̃
(Ho et al. 2020, eq. 7).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._utils import Timestep, cast, clamp_min, sqrt, step_alpha_bars
from .base import StepOutput, resolve_timesteps
from .parameterization import PredictionType, check_prediction_type, eps_from_x0, predict_x0_eps
from .schedule import NoiseSchedule
from .timesteps import Spacing, previous_timesteps, timestep_list

__all__ = ["DDIMSampler", "ddim_step"]


def ddim_step(
    schedule: NoiseSchedule,
    model_output: Tensor,
    x_t: Tensor,
    t: Timestep,
    t_prev: Timestep,
    *,
    eta: float = 0.0,
    noise: Tensor | None = None,
    prediction_type: PredictionType = "epsilon",
    clip: float | None = None,
) -> StepOutput:
    """One DDIM step x_t → x_{t_prev} (Song et al. 2021, eq. 12).

    Notation: ᾱ_t → ``a_t``, ᾱ_{t'} → ``a_prev``, σ_t(η) → ``sigma``, ε_θ(x_t, t) → ``eps``.

    Args:
        schedule: The noise schedule.
        model_output: (B, ...) model output at (x_t, t), of type ``prediction_type``.
        x_t: (B, ...) current sample (any shape, float32 or float64).
        t: int or (B,) current timesteps in [0, T).
        t_prev: int or (B,) target timesteps, < t; negative means the clean end (ᾱ = 1), where
            the step returns x̂_0.
        eta: η ≥ 0; 0 is deterministic, 1 is the DDPM posterior with variance β̃.
        noise: (B, ...) Gaussian z, used when η > 0 (drawn with ``torch.randn_like`` if None).
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
        clip: If set, clamp x̂_0 to [-clip, clip] and recompute ε̂ from the clamped x̂_0.

    Returns:
        ``StepOutput(prev_sample, pred_x0)``: x_{t'} and x̂_0, each (B, ...) in x_t's dtype.
    """
    check_prediction_type(prediction_type)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    # 1. ᾱ at both ends of the step (float64, broadcast over x_t)
    a_t, a_prev = step_alpha_bars(schedule, t, t_prev, x_t)
    # 2. predicted x_0 and ε ("predicted x_0" of eq. 12), optionally clipped
    x0, eps = predict_x0_eps(schedule, model_output, x_t, t, prediction_type)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        eps = eps_from_x0(schedule, x_t, x0, t)
    # 3. σ_t(η) of eq. 16
    sigma = eta * sqrt(clamp_min((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)))
    # 4. "direction pointing to x_t" of eq. 12
    dir_coef = sqrt(clamp_min(1.0 - a_prev - sigma**2))
    x_prev = cast(sqrt(a_prev), x_t) * x0 + cast(dir_coef, x_t) * eps
    # 5. random noise (σ = 0 when η = 0 or at the clean end)
    if eta > 0:
        if noise is None:
            noise = torch.randn_like(x_t)
        x_prev = x_prev + cast(sigma, x_t) * noise
    return StepOutput(x_prev, x0)


class DDIMSampler:
    """DDIM sampling over ``num_steps`` timesteps of ``schedule``; usable right after creation.

    Args:
        schedule: The noise schedule the model was trained with.
        num_steps: N, number of model evaluations.
        spacing: Timestep spacing (see :func:`make_timesteps`); ``trailing`` starts at T - 1.
        eta: η of Song et al. eq. 16.
        prediction_type: What the model predicts.
        clip: Optional clamp of x̂_0 to [-clip, clip].
        timesteps: Optional explicit (N,) descending grid in [0, T); replaces ``num_steps`` and
            ``spacing`` (the step after the last one goes to the clean end).

    Attributes:
        timesteps: (N,) descending timesteps at which the model is evaluated.
        prev_timesteps: (N,) the target of each step; the last is -1 (the clean end).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        num_steps: int | None = None,
        spacing: Spacing = "trailing",
        eta: float = 0.0,
        prediction_type: PredictionType = "epsilon",
        clip: float | None = None,
        timesteps: Tensor | None = None,
    ) -> None:
        check_prediction_type(prediction_type)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.schedule = schedule
        self.eta = float(eta)
        self.prediction_type = prediction_type
        self.clip = clip
        self.timesteps = resolve_timesteps(schedule.num_timesteps, num_steps, spacing, timesteps)
        self.prev_timesteps = previous_timesteps(self.timesteps)
        # python ints for step(): under torch.export an int is a constant of the graph, an
        # element of a tensor made while tracing is not (the ONNX export of DiffusionDet)
        if timesteps is None:
            grid = timestep_list(schedule.num_timesteps, num_steps, spacing)
        else:
            grid = self.timesteps.tolist()
        self._pairs = list(zip(grid, grid[1:] + [-1], strict=True))

    @property
    def num_steps(self) -> int:
        return self.timesteps.numel()

    @property
    def stochastic(self) -> bool:
        """Whether :meth:`step` consumes noise (η > 0)."""
        return self.eta > 0

    def step(
        self, model_output: Tensor, i: int, x_t: Tensor, *, noise: Tensor | None = None
    ) -> StepOutput:
        """Take step ``i`` (0-based loop position): ``timesteps[i]`` → ``prev_timesteps[i]``.

        Args:
            model_output: (B, ...) model output at (x_t, timesteps[i]).
            i: Step index in [0, N).
            x_t: (B, ...) current sample.
            noise: Optional (B, ...) Gaussian for η > 0.

        Returns:
            ``StepOutput(prev_sample, pred_x0)``.
        """
        return ddim_step(
            self.schedule,
            model_output,
            x_t,
            *self._pairs[i],
            eta=self.eta,
            noise=noise,
            prediction_type=self.prediction_type,
            clip=self.clip,
        )

    def __repr__(self) -> str:
        return f"DDIMSampler(num_steps={self.num_steps}, eta={self.eta}, schedule={self.schedule})"
