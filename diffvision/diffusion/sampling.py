"""The full reverse loop: build a sampler by name and run it from x_T to x_0.

A hand-written loop is just as short (see :mod:`diffvision.diffusion.base` for the contract)::

    sampler = DDIMSampler(schedule, num_steps=50)
    for i, t in enumerate(sampler.timesteps.tolist()):
        x, _ = sampler.step(model(x, torch.full((B,), t)), i, x)

:func:`sample` is the one loop the tasks use (image DDPM, pixel features, DiffusionDet); its
``timesteps``, ``noise_fn`` and ``step_callback`` give callers an explicit grid, control of every
random draw, and a hook after each step (box renewal, ILVR, collecting per-step outputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .base import randn_like
from .ddim import DDIMSampler
from .ddpm import DDPMSampler, Variance
from .dpm_solver import DPMSolverPPSampler
from .parameterization import PredictionType
from .schedule import NoiseSchedule
from .timesteps import Spacing

__all__ = [
    "DEFAULT_SPACING",
    "SAMPLERS",
    "NoiseFn",
    "Sampler",
    "StepCallback",
    "build_sampler",
    "sample",
]

ModelFn = Callable[[Tensor, Tensor], Tensor]
NoiseFn = Callable[[int], Tensor]
"""``noise_fn(i)``: the (B, ...) Gaussian draw used by step i."""
StepCallback = Callable[[int, int, Tensor, Tensor], "Tensor | None"]
"""``step_callback(i, t, x_prev, model_output)``: may return a tensor that replaces ``x_prev``."""
Sampler = DDIMSampler | DDPMSampler | DPMSolverPPSampler

SAMPLERS: dict[str, type] = {
    "ddim": DDIMSampler,
    "ddpm": DDPMSampler,
    "dpm_solver++": DPMSolverPPSampler,
}
"""Sampler name → class."""

DEFAULT_SPACING: dict[str, str] = {
    "ddim": "trailing",
    "ddpm": "trailing",
    "dpm_solver++": "dpm_solver",
}
"""Timestep spacing per sampler when ``spacing=None``: grids that start at T - 1."""


def build_sampler(
    name: str,
    schedule: NoiseSchedule,
    *,
    num_steps: int | None = None,
    spacing: Spacing | None = None,
    eta: float = 0.0,
    order: int = 2,
    variance: Variance = "fixed_small",
    prediction_type: PredictionType = "epsilon",
    clip: float | None = None,
    analytic_gamma: Tensor | None = None,
    lower_order_final: bool = True,
    timesteps: Tensor | None = None,
) -> Sampler:
    """Build the sampler ``name`` with the options that apply to it (see :func:`sample`)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known samplers: {list(SAMPLERS)}")
    spacing = DEFAULT_SPACING[name] if spacing is None else spacing
    common = dict(
        num_steps=num_steps,
        spacing=spacing,
        prediction_type=prediction_type,
        clip=clip,
        timesteps=timesteps,
    )
    if name == "ddim":
        return DDIMSampler(schedule, eta=eta, **common)
    if name == "ddpm":
        return DDPMSampler(schedule, variance=variance, analytic_gamma=analytic_gamma, **common)
    return DPMSolverPPSampler(schedule, order=order, lower_order_final=lower_order_final, **common)


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    x_T: Tensor,
    schedule: NoiseSchedule,
    *,
    sampler: str = "ddim",
    num_steps: int | None = None,
    eta: float = 0.0,
    order: int = 2,
    prediction_type: PredictionType = "epsilon",
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    spacing: Spacing | None = None,
    variance: Variance = "fixed_small",
    clip: float | None = None,
    analytic_gamma: Tensor | None = None,
    lower_order_final: bool = True,
    timesteps: Tensor | None = None,
    noise_fn: NoiseFn | None = None,
    step_callback: StepCallback | None = None,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Run a whole reverse process from ``x_T`` (under ``torch.no_grad``).

    Step i evaluates ``model_fn`` at ``timesteps[i]``, steps to ``timesteps[i + 1]`` (the clean
    end, ᾱ = 1, after the last one), then calls ``step_callback`` if given.

    Args:
        model_fn: ``model_fn(x_t, t)`` with x_t (B, ...) and t a (B,) long tensor of original
            training timesteps (``schedule.timestep_map`` applied); returns the model output
            (B, ...), or (B, 2C, ...) with the raw variance channels last for
            ``variance="learned"`` (split in half along dim 1).
        x_T: (B, ...) starting state (usually standard normal), float32 or float64.
        schedule: The noise schedule the model was trained with.
        sampler: ``ddim`` (Song et al. 2021), ``ddpm`` (Ho et al. 2020 ancestral, strided when
            ``num_steps`` < T) or ``dpm_solver++`` (Lu et al. 2022 multistep).
        num_steps: N model evaluations (may be omitted with ``timesteps``).
        eta: DDIM's η (0 = deterministic).
        order: DPM-Solver++ order (1-3).
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
        generator: Seeds every noise draw of the loop (DDIM η > 0 and DDPM); the draws have
            x's device, so a CPU generator needs CPU data (else use ``noise_fn``).
        return_trajectory: Also return the list of states [x_T, ..., x_0] (N + 1 tensors, each
            after the step callback).
        spacing: Timestep spacing; None picks :data:`DEFAULT_SPACING` for the sampler.
        variance: DDPM variance: ``fixed_small``, ``fixed_large``, ``analytic`` or ``learned``.
        clip: Optional clamp of x̂_0 to [-clip, clip] at every step.
        analytic_gamma: (N,) Γ at the sampler's timesteps, for ``variance="analytic"``.
        lower_order_final: DPM-Solver++: lower the order on the final steps when N < 15.
        timesteps: Optional explicit (N,) descending long grid in [0, T) (e.g. ``[999, 749, 499,
            249]``); replaces ``num_steps`` and ``spacing``.
        noise_fn: ``noise_fn(i) -> (B, ...)`` Gaussian draw of step i, called once per step when
            the sampler is stochastic (DDIM η > 0, DDPM), the last step included; replaces the
            ``generator`` draws so the caller controls every random number (per-image
            generators, graph inputs). Give either ``noise_fn`` or ``generator``.
        step_callback: ``step_callback(i, t, x_prev, model_output) -> Tensor | None``, called
            after step i with ``t = timesteps[i]`` (int, the schedule's index), the new state and
            the model output of the step; a returned tensor replaces ``x_prev`` (box renewal,
            ILVR, collecting per-step outputs).

    Returns:
        x_0 (B, ...), or ``(x_0, trajectory)`` if ``return_trajectory``.
    """
    if noise_fn is not None and generator is not None:
        raise ValueError("give either noise_fn or generator, not both")
    solver = build_sampler(
        sampler,
        schedule,
        num_steps=num_steps,
        spacing=spacing,
        eta=eta,
        order=order,
        variance=variance,
        prediction_type=prediction_type,
        clip=clip,
        analytic_gamma=analytic_gamma,
        lower_order_final=lower_order_final,
        timesteps=timesteps,
    )
    learned = isinstance(solver, DDPMSampler) and solver.variance == "learned"
    x = x_T
    trajectory = [x]
    history: tuple = ()
    grid = solver.timesteps.tolist()
    model_timesteps = schedule.timestep_map[solver.timesteps.to(schedule.device)].to(x.device)
    for i in range(solver.num_steps):
        t_model = model_timesteps[i].repeat(x.shape[0])  # (B,), a real tensor, not a view
        output = model_fn(x, t_model)
        if isinstance(solver, DPMSolverPPSampler):
            x_prev, _, history = solver.step(output, i, x, history=history)
        else:
            noise = None
            if solver.stochastic:
                noise = noise_fn(i) if noise_fn is not None else randn_like(x, generator)
            if learned:
                mean_out, var_out = output.chunk(2, dim=1)
                x_prev, _ = solver.step(mean_out, i, x, noise=noise, model_variance=var_out)
            else:
                x_prev, _ = solver.step(output, i, x, noise=noise)
        if step_callback is not None:
            replaced = step_callback(i, grid[i], x_prev, output)
            if replaced is not None:
                x_prev = replaced
        x = x_prev
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x
