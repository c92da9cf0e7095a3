"""add_noise = q(x_t | x_0) (Ho et al. eq. 4) and the posterior q(x_t' | x_t, x_0) (eq. 7)."""

from __future__ import annotations

import pytest
import torch

from diffvision.diffusion import add_noise, get_schedule, posterior_mean_variance


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_noise_exact_with_known_noise(dtype):
    schedule = get_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 5, 4, generator=g, dtype=dtype)
    noise = torch.randn(3, 2, 5, 4, generator=g, dtype=dtype)
    t = torch.tensor([0, 499, 999])
    x_t = add_noise(schedule, x0, noise, t)
    assert x_t.dtype == dtype and x_t.shape == x0.shape
    for b, tb in enumerate(t.tolist()):
        a = schedule.alphas_cumprod[tb]
        expected = a.sqrt() * x0[b].double() + (1 - a).sqrt() * noise[b].double()
        torch.testing.assert_close(x_t[b].double(), expected, rtol=1e-6, atol=1e-6)
    # an int timestep broadcasts over the batch
    torch.testing.assert_close(add_noise(schedule, x0, noise, 499)[1], x_t[1])


def test_add_noise_mean_and_variance_monte_carlo():
    schedule = get_schedule("linear", 1000)
    n = 200_000
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.full((n,), 300)
    x_t = add_noise(schedule, x0, noise, t)
    a = schedule.alphas_cumprod[300].item()
    std_err = (1 - a) ** 0.5 / n**0.5
    assert abs(x_t.mean().item() - a**0.5 * 1.5) < 5 * std_err
    assert x_t.var().item() == pytest.approx(1 - a, rel=5 * (2 / n) ** 0.5)


def test_add_noise_rejects_bad_inputs():
    schedule = get_schedule("linear", 50)
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="noise shape"):
        add_noise(schedule, x0, torch.zeros(2, 4), 0)
    with pytest.raises(ValueError, match="timesteps"):
        add_noise(schedule, x0, torch.zeros(2, 3), 50)
    with pytest.raises(ValueError, match="batch"):
        add_noise(schedule, x0, torch.zeros(2, 3), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integers"):
        add_noise(schedule, x0, torch.zeros(2, 3), torch.tensor([1.0, 2.0]))


def test_posterior_matches_schedule_tables_and_clean_end():
    schedule = get_schedule("cosine", 100)
    g = torch.Generator().manual_seed(0)
    x0, x_t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    t = torch.tensor([1, 10, 50, 99])
    mean, var = posterior_mean_variance(schedule, x0, x_t, t, t - 1)
    c1 = schedule.posterior_mean_coef1[t].float()[:, None]
    c2 = schedule.posterior_mean_coef2[t].float()[:, None]
    torch.testing.assert_close(mean, c1 * x0 + c2 * x_t)
    torch.testing.assert_close(var.flatten(), schedule.posterior_variance[t])
    # t_prev = -1 is the clean end: mean x_0, variance 0
    mean, var = posterior_mean_variance(schedule, x0, x_t, t, -1)
    torch.testing.assert_close(mean, x0)
    assert bool((var == 0).all())
    with pytest.raises(ValueError, match="t_prev must be < t"):
        posterior_mean_variance(schedule, x0, x_t, 5, 5)
