"""Analytic-DPM (Bao et al. 2022): the optimal variance, its bounds and the Gaussian closed form."""

from __future__ import annotations

import pytest
import torch

from diffvision.diffusion import (
    DDPMSampler,
    analytic_variance,
    ddpm_step,
    estimate_analytic_gamma,
    get_schedule,
    sample,
)


def _gaussian_gamma(schedule, s, t):
    """Γ_n = E‖ε*(x_n)‖²/d = β̄_n / (ᾱ_n s² + β̄_n) for N(0, s² I) data."""
    a = schedule.alphas_cumprod[t]
    return (1 - a) / (a * s**2 + 1 - a)


@pytest.mark.parametrize("stride", [1, 100])
def test_analytic_variance_is_the_exact_gaussian_reverse_variance(stride):
    """σ*² = Var(x_{n-1} | x_n) = β_n v_{n-1} / v_n, v_k = ᾱ_k s² + β̄_k, β_n = 1 - ᾱ_n/ᾱ_{n-1}."""
    schedule = get_schedule("cosine", 1000)
    t = torch.arange(stride, 1000, 7)
    t_prev = t - stride
    ac = schedule.alphas_cumprod
    for s in (0.3, 1.0, 2.0):
        v = ac * s**2 + 1 - ac
        beta = 1 - ac[t] / ac[t_prev]
        exact = beta * v[t_prev] / v[t]
        got = analytic_variance(schedule, t, t_prev, _gaussian_gamma(schedule, s, t))
        torch.testing.assert_close(got, exact, rtol=1e-9, atol=1e-15)


def test_analytic_variance_between_ddpm_small_and_large():
    """Data with per-dimension variance s² <= 1 (e.g. images in [-1, 1]): β̃ <= σ*² <= β."""
    schedule = get_schedule("linear", 1000)
    t = torch.arange(1, 1000)
    for stride in (1, 10):
        t_prev = (t - stride).clamp(min=0)
        keep = t_prev < t
        tt, tp = t[keep], t_prev[keep]
        ac_t, ac_p = schedule.alphas_cumprod[tt], schedule.alphas_cumprod[tp]
        small = (1 - ac_p) / (1 - ac_t) * (1 - ac_t / ac_p)
        large = 1 - ac_t / ac_p
        for s in (0.2, 0.5, 1.0):
            got = analytic_variance(schedule, tt, tp, _gaussian_gamma(schedule, s, tt))
            assert bool((got >= small * (1 - 1e-9)).all()) and bool(
                (got <= large * (1 + 1e-9)).all()
            )
    # s = 1: the optimal variance is exactly β (fixed_large is optimal for N(0, I) data)
    got = analytic_variance(schedule, t, t - 1, _gaussian_gamma(schedule, 1.0, t))
    torch.testing.assert_close(got, schedule.betas[1:])


def test_analytic_variance_is_clipped_to_theorem_2_bounds():
    schedule = get_schedule("cosine", 1000)
    small = schedule.posterior_variance[500]
    assert analytic_variance(schedule, 500, 499, 5.0).item() == pytest.approx(small.item())
    upper = analytic_variance(schedule, 500, 499, 0.0)
    assert analytic_variance(schedule, 500, 499, -3.0).item() == pytest.approx(upper.item())
    assert upper.item() > schedule.betas[500].item()


def test_estimate_gamma_with_the_oracle_model(gaussian_oracle):
    schedule = get_schedule("cosine", 1000)
    s = 0.5
    oracle = gaussian_oracle(schedule, s)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(4000, 8, generator=g, dtype=torch.float64) * s
    timesteps = torch.tensor([999, 700, 300, 50, 0])
    gamma = estimate_analytic_gamma(
        oracle.eps, data, schedule, timesteps, batch_size=1000, generator=g
    )
    assert gamma.shape == (5,) and gamma.dtype == torch.float64
    # 32000 squared Gaussians per estimate: relative std √(2/32000) ≈ 0.8 %
    torch.testing.assert_close(gamma, _gaussian_gamma(schedule, s, timesteps), rtol=0.04, atol=0)
    # other parameterisations are converted to ε first
    gamma_x0 = estimate_analytic_gamma(
        oracle.x0,
        data,
        schedule,
        timesteps,
        prediction_type="sample",
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(gamma_x0, _gaussian_gamma(schedule, s, timesteps), rtol=0.04, atol=0)


def test_ddpm_step_uses_the_analytic_variance():
    schedule = get_schedule("cosine", 1000)
    x_t = torch.zeros(3, 2, dtype=torch.float64)
    noise = torch.ones(3, 2, dtype=torch.float64)
    t, t_prev = torch.tensor([900, 500, 100]), torch.tensor([800, 400, -1])
    gamma = torch.tensor([0.9, 0.5, 0.3], dtype=torch.float64)
    x_prev, _ = ddpm_step(
        schedule, x_t, x_t, t, t_prev, noise=noise, variance="analytic", analytic_gamma=gamma
    )
    std = analytic_variance(schedule, t[:2], t_prev[:2], gamma[:2]).sqrt()
    torch.testing.assert_close(x_prev[:2], std[:, None].expand(2, 2))
    assert bool((x_prev[2] == 0).all())  # the last step adds no noise


def test_analytic_ddpm_sampling_is_exact_on_gaussian_data(gaussian_oracle):
    """With the optimal mean and variance every strided step is the exact reverse conditional."""
    schedule = get_schedule("linear", 1000)
    s = 0.5
    oracle = gaussian_oracle(schedule, s)
    sampler = DDPMSampler(
        schedule, num_steps=10, variance="analytic", analytic_gamma=torch.zeros(10)
    )
    gamma = _gaussian_gamma(schedule, s, sampler.timesteps)
    n = 20_000
    v_T = float(oracle.variance[sampler.timesteps[0]])
    x_T = (
        torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        * v_T**0.5
    )
    kw = dict(sampler="ddpm", num_steps=10, generator=torch.Generator().manual_seed(1))
    _, trajectory = sample(
        oracle.eps,
        x_T,
        schedule,
        variance="analytic",
        analytic_gamma=gamma,
        return_trajectory=True,
        **kw,
    )
    # x at each visited timestep has exactly the marginal variance v_t (MC std ≈ 1 %)
    for x, t in zip(trajectory[1:-1], sampler.timesteps[1:].tolist()):
        assert x.var().item() == pytest.approx(float(oracle.variance[t]), rel=0.05)
    # fixed_small under-disperses on the same 10 steps
    _, small = sample(oracle.eps, x_T, schedule, return_trajectory=True, **kw)
    assert small[-2].var().item() < 0.85 * float(oracle.variance[sampler.timesteps[-1]])


def test_analytic_needs_gamma_per_timestep():
    schedule = get_schedule("cosine", 100)
    with pytest.raises(ValueError, match="analytic_gamma"):
        DDPMSampler(schedule, num_steps=10, variance="analytic")
    with pytest.raises(ValueError, match="one per timestep"):
        DDPMSampler(schedule, num_steps=10, variance="analytic", analytic_gamma=torch.ones(9))
