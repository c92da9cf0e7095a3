"""Conversions between the three model parameterisations: ε (noise), x_0 (sample) and v.

With x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε (Ho et al. 2020, eq. 4) and the velocity of Salimans & Ho 2022
(arXiv:2202.00512, Sec. 4: v = √ᾱ_t ε - √(1 - ᾱ_t) x_0):

    x_0 = (x_t - √(1 - ᾱ_t) ε) / √ᾱ_t          ε = (x_t - √ᾱ_t x_0) / √(1 - ᾱ_t)
    x_0 = √ᾱ_t x_t - √(1 - ᾱ_t) v              ε = √(1 - ᾱ_t) x_t + √ᾱ_t v

All functions take (B, ...) tensors of any shape, float32 or float64, and t as an int or a (B,)
integer tensor in [0, T). Coefficients are computed in float64 and cast to the data's dtype.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from ._utils import Coef, Timestep, cast, extract, sqrt
from .schedule import NoiseSchedule

__all__ = [
    "PREDICTION_TYPES",
    "PredictionType",
    "check_prediction_type",
    "eps_from_v",
    "eps_from_x0",
    "get_velocity",
    "predict_x0_eps",
    "v_from_eps_x0",
    "x0_from_eps",
    "x0_from_v",
]

PredictionType = Literal["epsilon", "sample", "v_prediction"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample", "v_prediction")


def _scales(schedule: NoiseSchedule, t: Timestep, x: Tensor) -> tuple[Coef, Coef]:
    """(√ᾱ_t, √(1 - ᾱ_t)) in float64, broadcast over ``x``."""
    a_t = extract(schedule.alphas_cumprod, t, x)
    return sqrt(a_t), sqrt(1.0 - a_t)


def x0_from_eps(schedule: NoiseSchedule, x_t: Tensor, eps: Tensor, t: Timestep) -> Tensor:
    """x_0 = (x_t - √(1 - ᾱ_t) ε) / √ᾱ_t (inverse of Ho et al. 2020 eq. 4).

    Args:
        schedule: The noise schedule.
        x_t: (B, ...) noisy sample.
        eps: (B, ...) noise (prediction).
        t: int or (B,) timesteps.

    Returns:
        (B, ...) x_0 in the dtype of ``x_t``.
    """
    alpha, sigma = _scales(schedule, t, x_t)
    return cast(1.0 / alpha, x_t) * x_t - cast(sigma / alpha, x_t) * eps


def eps_from_x0(schedule: NoiseSchedule, x_t: Tensor, x0: Tensor, t: Timestep) -> Tensor:
    """ε = (x_t - √ᾱ_t x_0) / √(1 - ᾱ_t).

    Args:
        schedule: The noise schedule.
        x_t: (B, ...) noisy sample.
        x0: (B, ...) clean sample (prediction).
        t: int or (B,) timesteps.

    Returns:
        (B, ...) ε in the dtype of ``x_t``.
    """
    alpha, sigma = _scales(schedule, t, x_t)
    return cast(1.0 / sigma, x_t) * x_t - cast(alpha / sigma, x_t) * x0


def v_from_eps_x0(schedule: NoiseSchedule, eps: Tensor, x0: Tensor, t: Timestep) -> Tensor:
    """v = √ᾱ_t ε - √(1 - ᾱ_t) x_0 (Salimans & Ho 2022).

    Args:
        schedule: The noise schedule.
        eps: (B, ...) noise.
        x0: (B, ...) clean sample.
        t: int or (B,) timesteps.

    Returns:
        (B, ...) v in the dtype of ``x0``.
    """
    alpha, sigma = _scales(schedule, t, x0)
    return cast(alpha, x0) * eps - cast(sigma, x0) * x0


def get_velocity(schedule: NoiseSchedule, x0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
    """The v-prediction training target for ``add_noise(schedule, x0, noise, t)``.

    Same as :func:`v_from_eps_x0` with the argument order of :func:`add_noise` (and of diffusers'
    ``get_velocity(sample, noise, timesteps)``).
    """
    return v_from_eps_x0(schedule, noise, x0, t)


def x0_from_v(schedule: NoiseSchedule, x_t: Tensor, v: Tensor, t: Timestep) -> Tensor:
    """x_0 = √ᾱ_t x_t - √(1 - ᾱ_t) v.

    Args:
        schedule: The noise schedule.
        x_t: (B, ...) noisy sample.
        v: (B, ...) velocity (prediction).
        t: int or (B,) timesteps.

    Returns:
        (B, ...) x_0 in the dtype of ``x_t``.
    """
    alpha, sigma = _scales(schedule, t, x_t)
    return cast(alpha, x_t) * x_t - cast(sigma, x_t) * v


def eps_from_v(schedule: NoiseSchedule, x_t: Tensor, v: Tensor, t: Timestep) -> Tensor:
    """ε = √(1 - ᾱ_t) x_t + √ᾱ_t v.

    Args:
        schedule: The noise schedule.
        x_t: (B, ...) noisy sample.
        v: (B, ...) velocity (prediction).
        t: int or (B,) timesteps.

    Returns:
        (B, ...) ε in the dtype of ``x_t``.
    """
    alpha, sigma = _scales(schedule, t, x_t)
    return cast(sigma, x_t) * x_t + cast(alpha, x_t) * v


def check_prediction_type(prediction_type: str) -> None:
    """Raise ValueError unless ``prediction_type`` is one of :data:`PREDICTION_TYPES`."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; expected one of {list(PREDICTION_TYPES)}"
        )


def predict_x0_eps(
    schedule: NoiseSchedule,
    model_output: Tensor,
    x_t: Tensor,
    t: Timestep,
    prediction_type: PredictionType = "epsilon",
) -> tuple[Tensor, Tensor]:
    """Turn a model output of any parameterisation into the pair (x̂_0, ε̂).

    Args:
        schedule: The noise schedule.
        model_output: (B, ...) ε̂, x̂_0 or v̂ according to ``prediction_type``.
        x_t: (B, ...) the model's input sample.
        t: int or (B,) timesteps in [0, T).
        prediction_type: ``epsilon``, ``sample`` (x_0) or ``v_prediction``.

    Returns:
        ``(x0, eps)``, both (B, ...) in the dtype of ``x_t``.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return x0_from_eps(schedule, x_t, model_output, t), model_output.to(x_t.dtype)
    if prediction_type == "sample":
        return model_output.to(x_t.dtype), eps_from_x0(schedule, x_t, model_output, t)
    return x0_from_v(schedule, x_t, model_output, t), eps_from_v(schedule, x_t, model_output, t)
