"""Box diffusion on the shared core: schedule values, corruption, DDIM step (DiffusionDet's
``detector.py``)."""

from __future__ import annotations

import math

import pytest
import torch

from diffvision.diffusion import ddim_step, make_timesteps, previous_timesteps
from diffvision.diffusion.schedule import get_schedule
from projects.detection.box_diffusion import (
    boxes_to_diffusion,
    diffusion_to_boxes,
    prepare_diffusion_concat,
)

# the official float64 cosine buffers (``cosine_beta_schedule``, s = 0.008):
# t, ᾱ_t, √ᾱ, √(1−ᾱ), √(1/ᾱ), √(1/ᾱ−1)
TABLE = [
    (0, 0.99995872, 0.999979, 0.006425, 1.00002, 0.006425),
    (249, 0.84701216, 0.920333, 0.391137, 1.08656, 0.424995),
    (499, 0.49384359, 0.702740, 0.711447, 1.42300, 1.01239),
    (749, 0.14427210, 0.379832, 0.925056, 2.63275, 2.43544),
    (999, 2.4288e-09, 4.93e-05, 1.0, 20291.2, 20291.2),
]


@pytest.mark.parametrize("row", TABLE, ids=[str(r[0]) for r in TABLE])
def test_cosine_schedule_values(row):
    t, ac, sqrt_ac, sqrt_1m, sqrt_recip, sqrt_recipm1 = row
    a = get_schedule("cosine", 1000).alphas_cumprod
    assert a.dtype == torch.float64
    assert math.isclose(a[t].item(), ac, rel_tol=1e-4)
    assert math.isclose(a[t].sqrt().item(), sqrt_ac, rel_tol=1e-3)
    assert math.isclose((1 - a[t]).sqrt().item(), sqrt_1m, rel_tol=1e-3, abs_tol=1e-6)
    assert math.isclose((1 / a[t]).sqrt().item(), sqrt_recip, rel_tol=1e-4)
    assert math.isclose((1 / a[t] - 1).sqrt().item(), sqrt_recipm1, rel_tol=1e-4)


def _pairs(num_steps: int) -> list[tuple[int, int]]:
    t = make_timesteps(1000, num_steps, "diffusiondet")
    return list(zip(t.tolist(), previous_timesteps(t).tolist(), strict=True))


def test_timestep_pairs():
    # the official (time, time_next) pairs of ddim_sample; time_next = -1 is the clean end
    assert _pairs(1) == [(999, -1)]
    assert _pairs(2) == [(999, 499), (499, -1)]
    assert _pairs(4) == [(999, 749), (749, 499), (499, 249), (249, -1)]
    assert [p[0] for p in _pairs(8)] == [999, 874, 749, 624, 499, 374, 249, 124]
    with pytest.raises(ValueError, match="num_steps"):
        make_timesteps(1000, 0, "diffusiondet")


@pytest.mark.parametrize("t,t_prev", [(999, 749), (749, 499), (499, 249), (874, 124)])
def test_core_ddim_step_on_x0_matches_official_closed_form(t, t_prev):
    torch.manual_seed(0)
    schedule = get_schedule("cosine", 1000)
    x_t = torch.randn(2, 5, 4) * 1.5
    x0 = torch.randn(2, 5, 4).clamp(-2, 2)
    z = torch.randn(2, 5, 4)
    ac = schedule.alphas_cumprod
    a, an = ac[t], ac[t_prev]
    # the official ``predict_noise_from_start`` + ``ddim_sample`` update, float64 like its buffers
    eps = ((1 / a).sqrt() * x_t.double() - x0.double()) / (1 / a - 1).sqrt()
    sigma = 1.0 * ((1 - a / an) * (1 - an) / (1 - a)).sqrt()
    c = (1 - an - sigma**2).sqrt()
    expected = x0.double() * an.sqrt() + c * eps + sigma * z.double()
    # what DiffusionDet.sample_boxes asks of the core: x̂_0 prediction, float64
    out = ddim_step(
        schedule,
        x0.double(),
        x_t.double(),
        t,
        t_prev,
        eta=1.0,
        noise=z.double(),
        prediction_type="sample",
    ).prev_sample
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_coefficients_of_the_first_step():
    # the first of 4 official DDIM steps, 999→749: c ≈ 1e-4 and σ ≈ 0.9251
    ac = get_schedule("cosine", 1000).alphas_cumprod
    a, an = ac[999], ac[749]
    sigma = ((1 - a / an) * (1 - an) / (1 - a)).sqrt()
    assert math.isclose(sigma.item(), 0.9251, abs_tol=1e-4)
    assert (1 - an - sigma**2).sqrt().item() < 2e-4


def test_box_space_round_trip():
    whwh = torch.tensor([[200.0, 100.0, 200.0, 100.0]])
    boxes = torch.tensor([[[10.0, 20.0, 110.0, 70.0], [0.0, 0.0, 200.0, 100.0]]])
    x = boxes_to_diffusion(boxes, whwh)
    torch.testing.assert_close(x[0, 1], torch.tensor([0.0, 0.0, 2.0, 2.0]))
    torch.testing.assert_close(diffusion_to_boxes(x, whwh), boxes)
    # out-of-range coordinates are clamped to [-scale, scale]
    assert diffusion_to_boxes(torch.full((1, 1, 4), 9.0), whwh).tolist() == [
        [[100.0, 50.0, 300.0, 150.0]]
    ]


def _replay(gt: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The official prepare_diffusion_concat written out with the same draws."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (1,), generator=g)
    noise = torch.randn(n, 4, generator=g)
    if len(gt) == 0:
        gt = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    if len(gt) > n:  # a random subset of n ground truths, in their original order
        x0 = gt[torch.randperm(len(gt), generator=g)[:n].sort().values]
    else:
        pad = torch.randn(n - len(gt), 4, generator=g) / 6.0 + 0.5
        pad[:, 2:] = pad[:, 2:].clamp(min=1e-4)
        x0 = torch.cat([gt, pad])
    x0 = (x0 * 2 - 1) * 2.0
    ac = get_schedule("cosine", 1000).alphas_cumprod[t]
    x = (ac.sqrt() * x0.double() + (1 - ac).sqrt() * noise.double()).float()
    x = (x.clamp(-2, 2) / 2 + 1) / 2
    return torch.cat([x[:, :2] - x[:, 2:] / 2, x[:, :2] + x[:, 2:] / 2], dim=1)


@pytest.mark.parametrize("num_gt", [0, 3])
def test_prepare_diffusion_concat_follows_the_official_recipe(num_gt):
    schedule = get_schedule("cosine", 1000)
    gt = torch.tensor([[0.3, 0.4, 0.2, 0.1], [0.5, 0.5, 0.9, 0.9], [0.7, 0.2, 0.05, 0.3]])[:num_gt]
    boxes, noise, t = prepare_diffusion_concat(
        gt, schedule=schedule, num_proposals=8, generator=torch.Generator().manual_seed(3)
    )
    assert boxes.shape == noise.shape == (8, 4) and t.shape == (1,) and t.dtype == torch.int64
    torch.testing.assert_close(boxes, _replay(gt, 8, 3), rtol=1e-6, atol=1e-6)


def test_prepare_diffusion_concat_subsamples_many_gt():
    """More ground truths than proposals: a random subset (not the first N) is corrupted."""
    gt = torch.rand(20, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    schedule = get_schedule("cosine", 1000)
    for seed in (3, 4):
        g = torch.Generator().manual_seed(seed)
        boxes, _, _ = prepare_diffusion_concat(gt, schedule=schedule, num_proposals=8, generator=g)
        torch.testing.assert_close(boxes, _replay(gt, 8, seed), rtol=1e-6, atol=1e-6)
    # the subset is not simply the first 8 ground truths
    assert not torch.allclose(_replay(gt, 8, 3), _replay(gt[:8], 8, 3))
