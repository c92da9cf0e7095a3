"""The full reverse loop: build a sampler by name and run it from x_T to x_0.

A hand-written loop is just as short (see :mod:`diffvision.diffusion.base` for the contract)::

    sampler = DDIMSampler(schedule, num_steps=50)
    for i, t in enumerate(sampler.timesteps.tolist()):
        x, _ = sampler.step(model(x, torch.full((B,), t)), i, x)
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

__all__ = ["DEFAULT_SPACING", "SAMPLERS", "Sampler", "build_sampler", "sample"]

ModelFn = Callable[[Tensor, Tensor], Tensor]
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
    num_steps: int,
    spacing: Spacing | None = None,
    eta: float = 0.0,
    order: int = 2,
    variance: Variance = "fixed_small",
    prediction_type: PredictionType = "epsilon",
    clip: float | None = None,
    analytic_gamma: Tensor | None = None,
    lower_order_final: bool = True,
) -> Sampler:
    """Build the sampler ``name`` with the options that apply to it (see :func:`sample`)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known samplers: {list(SAMPLERS)}")
    spacing = DEFAULT_SPACING[name] if spacing is None else spacing
    common = dict(num_steps=num_steps, spacing=spacing, prediction_type=prediction_type, clip=clip)
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
    num_steps: int,
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
    noise_fn: Callable[[int], Tensor] | None = None,
    step_callback: Callable[[int, int, Tensor, Tensor], Tensor | None] | None = None,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Run a whole reverse process from ``x_T`` (under ``torch.no_grad``).

    Args:
        model_fn: ``model_fn(x_t, t)`` with x_t (B, ...) and t a (B,) long tensor of original
            training timesteps (``schedule.timestep_map`` applied); returns the model output.
        x_T: (B, ...) starting noise (usually standard normal), float32 or float64.
        schedule: The noise schedule the model was trained with.
        sampler: ``ddim`` (Song et al. 2021), ``ddpm`` (Ho et al. 2020 ancestral, strided when
            ``num_steps`` < T) or ``dpm_solver++`` (Lu et al. 2022 multistep).
        num_steps: N model evaluations.
        eta: DDIM's η (0 = deterministic).
        order: DPM-Solver++ order (1-3).
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
        generator: Seeds every noise draw of the loop (DDIM η > 0 and DDPM).
        return_trajectory: Also return the list of states [x_T, ..., x_0] (N + 1 tensors).
        spacing: Timestep spacing; None picks :data:`DEFAULT_SPACING` for the sampler.
        variance: DDPM variance: ``fixed_small``, ``fixed_large`` or ``analytic``.
        clip: Optional clamp of x̂_0 to [-clip, clip] at every step.
        analytic_gamma: (N,) Γ at the sampler's timesteps, for ``variance="analytic"``.
        lower_order_final: DPM-Solver++: lower the order on the final steps when N < 15.
        noise_fn: ``noise_fn(i)`` returns the Gaussian draw of step i (replaces ``generator``).
        step_callback: ``step_callback(i, t, x_prev, model_output)`` after step i; a returned
            tensor replaces ``x_prev``.

    Returns:
        x_0 (B, ...), or ``(x_0, trajectory)`` if ``return_trajectory``.
    """
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
    )
    x = x_T
    trajectory = [x]
    history: tuple = ()
    model_timesteps = schedule.timestep_map[solver.timesteps].to(x.device)
    for i in range(solver.num_steps):
        t_model = model_timesteps[i].repeat(x.shape[0])  # (B,), a real tensor, not a view
        output = model_fn(x, t_model)
        if isinstance(solver, DPMSolverPPSampler):
            x, _, history = solver.step(output, i, x, history=history)
        else:
            noise = None
            if solver.stochastic:
                noise = noise_fn(i) if noise_fn is not None else randn_like(x, generator)
            x, _ = solver.step(output, i, x, noise=noise)
        if step_callback is not None:
            replaced = step_callback(i, solver._pairs[i][0], x, output)
            x = x if replaced is None else replaced
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x
