"""The shared diffusion core: schedules, the forward process, parameterisations and samplers.

Independent of images and boxes: every function works on (B, ...) tensors of any shape, float32 or
float64 (coefficients are computed in float64 and cast to the data's dtype).
"""

from __future__ import annotations

from .analytic import analytic_variance, estimate_analytic_gamma, optimal_variance
from .base import StepOutput
from .ddim import DDIMSampler, ddim_step
from .ddpm import VARIANCES, DDPMSampler, ddpm_step
from .dpm_solver import DPMSolverOutput, DPMSolverPPSampler, dpm_solver_pp_step
from .forward import add_noise, posterior_mean_variance
from .parameterization import (
    PREDICTION_TYPES,
    check_prediction_type,
    eps_from_v,
    eps_from_x0,
    get_velocity,
    predict_x0_eps,
    v_from_eps_x0,
    x0_from_eps,
    x0_from_v,
)
from .sampling import SAMPLERS, build_sampler, sample
from .schedule import SCHEDULES, NoiseSchedule, get_schedule
from .timesteps import SPACINGS, make_timesteps, previous_timesteps

__all__ = [
    "PREDICTION_TYPES",
    "SAMPLERS",
    "SCHEDULES",
    "SPACINGS",
    "VARIANCES",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverOutput",
    "DPMSolverPPSampler",
    "NoiseSchedule",
    "StepOutput",
    "add_noise",
    "analytic_variance",
    "build_sampler",
    "check_prediction_type",
    "ddim_step",
    "ddpm_step",
    "dpm_solver_pp_step",
    "eps_from_v",
    "eps_from_x0",
    "estimate_analytic_gamma",
    "get_schedule",
    "get_velocity",
    "make_timesteps",
    "optimal_variance",
    "posterior_mean_variance",
    "predict_x0_eps",
    "previous_timesteps",
    "sample",
    "v_from_eps_x0",
    "x0_from_eps",
    "x0_from_v",
]
