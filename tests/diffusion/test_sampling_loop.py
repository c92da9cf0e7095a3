"""The one sampling loop: explicit timesteps, caller-controlled noise, the step callback.

Every check compares the loop against a closed form or against the loop without the option.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffvision.diffusion import (
    SAMPLERS,
    DDPMSampler,
    ddim_step,
    ddpm_step,
    get_schedule,
    make_timesteps,
    sample,
)

STOCHASTIC = {"ddim": dict(eta=1.0), "ddpm": dict(variance="fixed_small")}


def _x_T(shape=(4, 3), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_noise_fn_with_the_generators_draws_equals_the_generator(name, gaussian_oracle):
    schedule = get_schedule("linear", 100)
    oracle = gaussian_oracle(schedule, 0.6)
    x_T = _x_T()
    kw = dict(sampler=name, num_steps=12, **STOCHASTIC[name])
    ref = sample(oracle.eps, x_T, schedule, generator=torch.Generator().manual_seed(5), **kw)
    gen = torch.Generator().manual_seed(5)
    calls = []

    def noise_fn(i):
        calls.append(i)
        return torch.randn(x_T.shape, generator=gen, dtype=x_T.dtype)

    got = sample(oracle.eps, x_T, schedule, noise_fn=noise_fn, **kw)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert calls == list(range(12))  # once per step, in order, the last step included


def test_noise_fn_draws_are_the_ones_used(gaussian_oracle):
    """Zero noise turns DDPM into its posterior-mean chain; other noise changes the result."""
    schedule = get_schedule("cosine", 50)
    oracle = gaussian_oracle(schedule, 0.8)
    x_T = _x_T()
    zero = sample(
        oracle.eps, x_T, schedule, sampler="ddpm", num_steps=50, noise_fn=lambda i: 0 * x_T
    )
    x = x_T
    for t in range(49, -1, -1):  # the mean chain written out with ddpm_step
        x, _ = ddpm_step(schedule, oracle.eps(x, torch.full((4,), t)), x, t, t - 1, noise=0 * x)
    torch.testing.assert_close(zero, x, rtol=0, atol=0)
    ones = sample(
        oracle.eps, x_T, schedule, sampler="ddpm", num_steps=50, noise_fn=lambda i: 1 + 0 * x_T
    )
    assert not torch.allclose(ones, zero)


def test_deterministic_samplers_never_call_noise_fn(gaussian_oracle):
    schedule = get_schedule("linear", 100)
    oracle = gaussian_oracle(schedule, 0.6)

    def noise_fn(i):
        raise AssertionError("a deterministic sampler drew noise")

    for name, kw in (("ddim", dict(eta=0.0)), ("dpm_solver++", dict(order=2))):
        sample(oracle.eps, _x_T(), schedule, sampler=name, num_steps=5, noise_fn=noise_fn, **kw)


def test_noise_fn_and_generator_are_exclusive():
    schedule = get_schedule("cosine", 10)
    with pytest.raises(ValueError, match="noise_fn or generator"):
        sample(
            lambda x, t: x,
            _x_T(),
            schedule,
            sampler="ddpm",
            num_steps=3,
            noise_fn=lambda i: torch.zeros(4, 3),
            generator=torch.Generator(),
        )


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_returning_none_changes_nothing(name, gaussian_oracle):
    schedule = get_schedule("cosine", 200)
    oracle = gaussian_oracle(schedule, 0.5)
    x_T = _x_T()
    kw = dict(sampler=name, num_steps=8, eta=1.0, order=3)
    ref, traj = sample(
        oracle.eps,
        x_T,
        schedule,
        generator=torch.Generator().manual_seed(1),
        return_trajectory=True,
        **kw,
    )
    seen = []

    def callback(i, t, x_prev, model_output):
        seen.append((i, t, x_prev.clone(), model_output.clone()))

    got = sample(
        oracle.eps,
        x_T,
        schedule,
        generator=torch.Generator().manual_seed(1),
        step_callback=callback,
        **kw,
    )
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    grid = make_timesteps(200, 8, "dpm_solver" if name == "dpm_solver++" else "trailing")
    assert [s[0] for s in seen] == list(range(8))
    assert [s[1] for s in seen] == grid.tolist()
    for (_i, t, x_prev, out), x_before, x_after in zip(seen, traj[:-1], traj[1:]):
        torch.testing.assert_close(x_prev, x_after, rtol=0, atol=0)
        torch.testing.assert_close(out, oracle.eps(x_before, torch.full((4,), t)))


def test_callback_replacement_propagates_linearly(gaussian_oracle):
    """DDIM (η = 0) with the Gaussian ε* is linear in x: doubling x after step 0 doubles x_0."""
    schedule = get_schedule("linear", 100)
    oracle = gaussian_oracle(schedule, 0.7)
    x_T = _x_T()
    plain = sample(oracle.eps, x_T, schedule, num_steps=10)

    def double_first(i, t, x_prev, model_output):
        return 2 * x_prev if i == 0 else None

    doubled = sample(oracle.eps, x_T, schedule, num_steps=10, step_callback=double_first)
    torch.testing.assert_close(doubled, 2 * plain, rtol=1e-12, atol=1e-12)
    last = sample(
        oracle.eps, x_T, schedule, num_steps=10, step_callback=lambda i, t, x, o: x * 0 + 3
    )
    torch.testing.assert_close(last, torch.full_like(x_T, 3.0))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "dpm_solver"])
def test_explicit_timesteps_equal_the_spacing_they_came_from(name, spacing, gaussian_oracle):
    schedule = get_schedule("cosine", 100)
    oracle = gaussian_oracle(schedule, 0.5)
    x_T = _x_T()
    kw = dict(sampler=name, eta=0.5, order=2)
    ref = sample(
        oracle.eps,
        x_T,
        schedule,
        num_steps=7,
        spacing=spacing,
        generator=torch.Generator().manual_seed(2),
        **kw,
    )
    grid = make_timesteps(100, 7, spacing)
    got = sample(
        oracle.eps, x_T, schedule, timesteps=grid, generator=torch.Generator().manual_seed(2), **kw
    )
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_official_diffusiondet_grid_is_visited_in_order(gaussian_oracle):
    """An arbitrary grid (DiffusionDet's 4 steps) is evaluated as given, then steps to x̂_0."""
    schedule = get_schedule("cosine", 1000)
    oracle = gaussian_oracle(schedule, 0.5)
    grid = torch.tensor([999, 749, 499, 249])
    seen = []

    def model_fn(x, t):
        seen.append(t.tolist())
        return oracle.eps(x, t)

    x_T = _x_T()
    x0 = sample(model_fn, x_T, schedule, timesteps=grid)
    assert seen == [[t] * 4 for t in grid.tolist()]
    x = x_T  # the same chain written out step by step with the core's ddim_step
    for t, t_prev in zip([999, 749, 499, 249], [749, 499, 249, -1]):
        x, _ = ddim_step(schedule, oracle.eps(x, torch.full((4,), t)), x, t, t_prev)
    torch.testing.assert_close(x0, x, rtol=0, atol=0)


def test_explicit_timesteps_are_validated():
    schedule = get_schedule("cosine", 10)
    x = _x_T()
    bad = {
        "strictly decreasing": [5, 5, 1],
        r"\[0, 10\)": [10, 3],
        "integers": torch.tensor([5.0, 1.0]),
        "non-empty 1-D": torch.zeros(0, dtype=torch.long),
    }
    for message, grid in bad.items():
        with pytest.raises(ValueError, match=message):
            sample(lambda x, t: x, x, schedule, timesteps=grid)
    with pytest.raises(ValueError, match="disagrees"):
        sample(lambda x, t: x, x, schedule, timesteps=[5, 1], num_steps=3)
    with pytest.raises(ValueError, match="num_steps or an explicit"):
        sample(lambda x, t: x, x, schedule)


def test_learned_variance_interpolates_between_the_fixed_variances(gaussian_oracle):
    """v_raw = -1 is β̃ (fixed_small), v_raw = +1 is β (fixed_large), v_raw = 0 their geometric
    mean (Nichol & Dhariwal eq. 15), on a strided grid."""
    schedule = get_schedule("linear", 100)
    oracle = gaussian_oracle(schedule, 0.6)
    x_T = _x_T()
    noise = [_x_T(seed=10 + i) for i in range(10)]
    kw = dict(sampler="ddpm", num_steps=10, noise_fn=lambda i: noise[i])
    for v_raw, fixed in ((-1.0, "fixed_small"), (1.0, "fixed_large")):

        def model_fn(x, t, v_raw=v_raw):
            return torch.cat([oracle.eps(x, t), torch.full_like(x, v_raw)], dim=1)

        got = sample(model_fn, x_T, schedule, variance="learned", **kw)
        ref = sample(oracle.eps, x_T, schedule, variance=fixed, **kw)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)

    sampler = DDPMSampler(schedule, num_steps=10, variance="learned")
    t, t_prev = int(sampler.timesteps[3]), int(sampler.prev_timesteps[3])
    a_t, a_prev = float(schedule.alphas_cumprod[t]), float(schedule.alphas_cumprod[t_prev])
    beta = 1 - a_t / a_prev
    beta_tilde = (1 - a_prev) / (1 - a_t) * beta
    x = _x_T(seed=4)
    eps = oracle.eps(x, torch.full((4,), t))
    mean, _ = ddpm_step(schedule, eps, x, t, t_prev, noise=0 * x)
    got, _ = sampler.step(eps, 3, x, noise=noise[0], model_variance=torch.zeros_like(x))
    expected = mean + math.sqrt(math.sqrt(beta * beta_tilde)) * noise[0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="model_variance"):
        ddpm_step(schedule, eps, x, t, t_prev, noise=noise[0], variance="learned")
