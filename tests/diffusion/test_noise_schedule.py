"""Schedules: closed-form values, invariants, respacing and the value semantics."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from diffvision.diffusion import SCHEDULES, NoiseSchedule, get_schedule


def test_cosine_matches_diffusiondet_table():
    alphas_cumprod = get_schedule("cosine", 1000).alphas_cumprod
    expected = torch.tensor([0.99995872, 0.84701216, 0.49384359, 0.14427210], dtype=torch.float64)
    torch.testing.assert_close(alphas_cumprod[[0, 249, 499, 749]], expected, rtol=0, atol=5e-9)
    assert alphas_cumprod[999].item() == pytest.approx(2.4288e-09, rel=1e-4)
    # only the last beta hits the 0.999 clip
    betas = get_schedule("cosine").betas
    assert betas[-1].item() == 0.999 and bool((betas[:-1] < 0.999).all())


def test_linear_endpoints_scale_with_num_timesteps():
    betas = get_schedule("linear", 1000).betas
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    betas = get_schedule("linear", 250).betas  # improved-diffusion: scaled by 1000 / T
    assert betas[0].item() == pytest.approx(4e-4) and betas[-1].item() == pytest.approx(0.08)
    diffs = betas.diff()
    torch.testing.assert_close(diffs, diffs[:1].expand_as(diffs))


def test_scaled_linear_is_linear_in_sqrt_beta():
    sqrt_betas = get_schedule("scaled_linear", 1000).betas.sqrt()
    assert sqrt_betas[0].item() == pytest.approx(math.sqrt(0.00085))
    assert sqrt_betas[-1].item() == pytest.approx(math.sqrt(0.012))
    diffs = sqrt_betas.diff()
    torch.testing.assert_close(diffs, diffs[:1].expand_as(diffs))


def test_sqrt_schedule_closed_form():
    schedule = get_schedule("sqrt", 1000)
    u = torch.tensor([1, 500, 900], dtype=torch.float64)
    # ᾱ at index i is ᾱ(u=(i+1)/T) / ᾱ(0) = (1 - √((i+1)/T + 1e-4)) / (1 - √1e-4)
    expected = (1 - (u / 1000 + 1e-4).sqrt()) / (1 - math.sqrt(1e-4))
    torch.testing.assert_close(schedule.alphas_cumprod[[0, 499, 899]], expected)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("num_timesteps", [50, 1000])
def test_schedule_invariants(name, num_timesteps):
    schedule = get_schedule(name, num_timesteps)
    assert schedule.num_timesteps == num_timesteps
    for tensor in (schedule.betas, schedule.alphas_cumprod):
        assert tensor.dtype == torch.float64 and tensor.shape == (num_timesteps,)
    assert bool(((schedule.betas > 0) & (schedule.betas < 1)).all())
    assert bool((schedule.alphas_cumprod.diff() < 0).all())  # strictly decreasing
    torch.testing.assert_close(schedule.alphas_cumprod, torch.cumprod(1 - schedule.betas, 0))
    assert schedule.alphas_cumprod_prev[0].item() == 1.0
    torch.testing.assert_close(schedule.alphas_cumprod_prev[1:], schedule.alphas_cumprod[:-1])


def test_derived_properties_closed_forms():
    s = get_schedule("linear", 100)
    ac, ac_prev, betas = s.alphas_cumprod, s.alphas_cumprod_prev, s.betas
    torch.testing.assert_close(s.sqrt_alphas_cumprod**2, ac)
    torch.testing.assert_close(s.sqrt_one_minus_alphas_cumprod**2, 1 - ac)
    torch.testing.assert_close(
        s.sqrt_recip_alphas_cumprod * s.sqrt_alphas_cumprod, torch.ones_like(ac)
    )
    torch.testing.assert_close(s.sqrt_recipm1_alphas_cumprod**2, 1 / ac - 1)
    torch.testing.assert_close(s.log_snr, torch.log(ac / (1 - ac)))
    torch.testing.assert_close(s.posterior_variance, betas * (1 - ac_prev) / (1 - ac))
    assert s.posterior_variance[0].item() == 0.0
    torch.testing.assert_close(s.posterior_log_variance_clipped[0], s.posterior_variance[1].log())
    # μ̃ coefficients: for x_0 = x_t = x both give back a consistent mean of x when noise-free
    torch.testing.assert_close(s.posterior_mean_coef1, betas * ac_prev.sqrt() / (1 - ac))
    torch.testing.assert_close(s.posterior_mean_coef2, (1 - ac_prev) * s.alphas.sqrt() / (1 - ac))


def test_unknown_schedule_lists_known_names():
    with pytest.raises(ValueError, match="cosine.*linear|linear.*cosine") as info:
        get_schedule("quadratic")
    assert "quadratic" in str(info.value)
    with pytest.raises(ValueError, match="num_timesteps"):
        get_schedule("linear", 0)
    with pytest.raises(ValueError, match="num_timesteps > 20"):
        get_schedule("linear", 20)  # β_T = 0.02 · 1000 / T would reach 1


def test_respace_keeps_alphas_cumprod_and_maps_timesteps():
    schedule = get_schedule("cosine", 1000)
    kept = [999, 0, 499, 250, 250]  # any order, duplicates ignored
    respaced = schedule.respace(kept)
    assert respaced.num_timesteps == 4
    assert respaced.timestep_map.tolist() == [0, 250, 499, 999]
    torch.testing.assert_close(respaced.alphas_cumprod, schedule.alphas_cumprod[[0, 250, 499, 999]])
    # a full respace is the identity; respacing twice composes the maps
    full = schedule.respace(range(1000))
    torch.testing.assert_close(full.betas, schedule.betas)
    twice = respaced.respace([1, 3])
    assert twice.timestep_map.tolist() == [250, 999]
    torch.testing.assert_close(twice.alphas_cumprod, schedule.alphas_cumprod[[250, 999]])
    with pytest.raises(ValueError, match="respace"):
        schedule.respace([1000])


def test_schedule_is_a_value():
    schedule = get_schedule("linear", 50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.betas = torch.zeros(50)
    # like Tensor.to: already on the device → the schedule itself (nothing to copy or cache)
    assert schedule.to("cpu") is schedule and schedule.to(torch.device("cpu")) is schedule
    custom = NoiseSchedule(betas=torch.full((5,), 0.1, dtype=torch.float32))
    assert custom.betas.dtype == torch.float64 and custom.num_timesteps == 5
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule(betas=torch.tensor([0.1, 0.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_to_another_device_copies_once_and_comes_back():
    schedule = get_schedule("cosine", 50)
    moved = schedule.to("cuda")
    assert moved is not schedule and moved.device.type == "cuda"
    assert schedule.to("cuda") is moved  # one copy per device, kept
    assert moved.to("cpu") is schedule
    torch.testing.assert_close(moved.alphas_cumprod.cpu(), schedule.alphas_cumprod)
    assert moved.timestep_map.device.type == "cuda"
