"""make_timesteps against hand-computed grids."""

from __future__ import annotations

import pytest
import torch

from diffvision.diffusion import SPACINGS, make_timesteps, previous_timesteps

HAND = {
    "leading": [900, 800, 700, 600, 500, 400, 300, 200, 100, 0],
    "trailing": [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
    "linspace": [999, 888, 777, 666, 555, 444, 333, 222, 111, 0],
    # round(linspace(0, 999, 11)) = 0, 99.9, ..., 499.5 (-> 500, half to even), ... minus the 0
    "dpm_solver": [999, 899, 799, 699, 599, 500, 400, 300, 200, 100],
    "diffusiondet": [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
}


@pytest.mark.parametrize("spacing", SPACINGS)
def test_hand_computed_grids(spacing):
    timesteps = make_timesteps(1000, 10, spacing)
    assert timesteps.dtype == torch.long
    assert timesteps.tolist() == HAND[spacing]


def test_trailing_never_overshoots():
    # np.arange(1000, 0, -1000/3) style grids can produce N + 1 entries
    assert make_timesteps(1000, 3, "trailing").tolist() == [999, 666, 332]
    assert make_timesteps(1000, 7, "leading").tolist() == [852, 710, 568, 426, 284, 142, 0]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("num_steps", [1, 2, 37, 999])
def test_grids_are_strictly_decreasing_and_in_range(spacing, num_steps):
    timesteps = make_timesteps(1000, num_steps, spacing)
    assert timesteps.numel() == num_steps
    assert bool((timesteps.diff() < 0).all())
    assert 0 <= timesteps.min() and timesteps.max() <= 999


def test_official_diffusiondet_grid():
    # the official (time, time_next) pairs: int(linspace(-1, 999, S + 1)), reversed
    assert make_timesteps(1000, 1, "diffusiondet").tolist() == [999]
    assert make_timesteps(1000, 2, "diffusiondet").tolist() == [999, 499]
    assert make_timesteps(1000, 3, "diffusiondet").tolist() == [999, 665, 332]
    assert make_timesteps(1000, 4, "diffusiondet").tolist() == [999, 749, 499, 249]
    assert make_timesteps(1000, 8, "diffusiondet").tolist() == [
        999, 874, 749, 624, 499, 374, 249, 124
    ]  # fmt: skip


def test_diffusiondet_grid_is_the_truncated_float32_torch_linspace_for_every_n():
    # the official code: torch.linspace(-1, T - 1, S + 1) (float32), .int(), reversed
    for n in range(1, 1001):
        official = torch.linspace(-1, 999, steps=n + 1).int().flip(0)[:-1]
        assert make_timesteps(1000, n, "diffusiondet").tolist() == official.tolist(), n


def test_all_steps_visit_every_timestep():
    for spacing in ("leading", "trailing", "linspace", "diffusiondet"):
        assert make_timesteps(50, 50, spacing).tolist() == list(range(49, -1, -1))


def test_previous_timesteps_end_at_clean():
    assert previous_timesteps(torch.tensor([9, 5, 2])).tolist() == [5, 2, -1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="'uniform'.*leading"):
        make_timesteps(1000, 10, "uniform")
    with pytest.raises(ValueError, match="num_steps"):
        make_timesteps(1000, 1001)
    with pytest.raises(ValueError, match="num_steps"):
        make_timesteps(1000, 0)
    with pytest.raises(ValueError, match="too large"):
        make_timesteps(1000, 1000, "dpm_solver")
