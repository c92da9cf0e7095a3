"""Round trips between ε, x_0 and v predictions."""

from __future__ import annotations

import pytest
import torch

from diffvision.diffusion import (
    PREDICTION_TYPES,
    add_noise,
    eps_from_v,
    eps_from_x0,
    get_schedule,
    get_velocity,
    predict_x0_eps,
    v_from_eps_x0,
    x0_from_eps,
    x0_from_v,
)


def _batch(dtype):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 8, generator=g, dtype=dtype)
    eps = torch.randn(4, 3, 8, generator=g, dtype=dtype)
    return x0, eps, torch.tensor([0, 10, 500, 998])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trips(dtype):
    schedule = get_schedule("cosine")
    x0, eps, t = _batch(dtype)
    x_t = add_noise(schedule, x0, eps, t)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x0_from_eps(schedule, x_t, eps, t), x0, **tol)
    torch.testing.assert_close(eps_from_x0(schedule, x_t, x0, t), eps, **tol)
    v = v_from_eps_x0(schedule, eps, x0, t)
    torch.testing.assert_close(get_velocity(schedule, x0, eps, t), v)
    torch.testing.assert_close(x0_from_v(schedule, x_t, v, t), x0, **tol)
    torch.testing.assert_close(eps_from_v(schedule, x_t, v, t), eps, **tol)
    for out in (x0_from_eps(schedule, x_t, eps, t), x0_from_v(schedule, x_t, v, t), v):
        assert out.dtype == dtype


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_predict_x0_eps_every_parameterization(prediction_type):
    schedule = get_schedule("linear")
    x0, eps, t = _batch(torch.float64)
    x_t = add_noise(schedule, x0, eps, t)
    output = {"epsilon": eps, "sample": x0, "v_prediction": get_velocity(schedule, x0, eps, t)}
    x0_hat, eps_hat = predict_x0_eps(schedule, output[prediction_type], x_t, t, prediction_type)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def test_velocity_closed_form_and_norm():
    # v is a rotation of (ε, x_0): ‖v‖² + ‖√(1-ᾱ)ε + √ᾱ x_0‖² = ‖ε‖² + ‖x_0‖²
    schedule = get_schedule("cosine")
    x0, eps, _ = _batch(torch.float64)
    a = schedule.alphas_cumprod[300]
    v = v_from_eps_x0(schedule, eps, x0, 300)
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0)
    other = (1 - a).sqrt() * eps + a.sqrt() * x0
    torch.testing.assert_close(
        v.square().sum() + other.square().sum(), eps.square().sum() + x0.square().sum()
    )


def test_bad_prediction_type():
    schedule = get_schedule("linear", 50)
    with pytest.raises(ValueError, match="'score'.*epsilon"):
        predict_x0_eps(schedule, torch.zeros(1, 2), torch.zeros(1, 2), 0, "score")
