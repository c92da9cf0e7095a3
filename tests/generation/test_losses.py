"""VLB terms and loss weights against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from diffvision.generation.losses import (
    discretized_gaussian_log_likelihood,
    learned_log_variance,
    normal_kl,
    snr_loss_weight,
)


def test_normal_kl_closed_form():
    zero = torch.zeros(())
    assert normal_kl(zero, zero, zero, zero) == 0
    # KL(N(1, 1) || N(0, 4)) = log 2 + (1 + 1) / 8 − 1/2
    kl = normal_kl(torch.tensor(1.0), zero, zero, torch.tensor(math.log(4.0)))
    assert float(kl) == pytest.approx(math.log(2.0) + 2.0 / 8.0 - 0.5, rel=1e-6)


def test_discretized_likelihood_is_a_distribution_over_256_levels():
    levels = torch.linspace(-1, 1, 256)  # the 256 uint8 values scaled to [-1, 1]
    for mean, log_scale in [(0.0, math.log(0.1)), (0.7, math.log(0.02)), (-1.2, 0.0)]:
        logp = discretized_gaussian_log_likelihood(
            levels, means=torch.full_like(levels, mean), log_scales=torch.tensor(log_scale)
        )
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=2e-3)


def test_learned_variance_interpolates_between_bounds():
    log_beta, log_tilde = torch.tensor(-3.0), torch.tensor(-5.0)
    v = torch.tensor([1.0, -1.0, 0.0])
    got = learned_log_variance(v, log_beta=log_beta, log_posterior_variance_clipped=log_tilde)
    torch.testing.assert_close(got, torch.tensor([-3.0, -5.0, -4.0]))


def test_min_snr_weights():
    snr = torch.tensor([0.5, 5.0, 20.0])
    torch.testing.assert_close(
        snr_loss_weight(snr, prediction_type="epsilon", gamma=5.0), torch.tensor([1.0, 1.0, 0.25])
    )
    torch.testing.assert_close(
        snr_loss_weight(snr, prediction_type="sample", gamma=5.0), torch.tensor([0.5, 5.0, 5.0])
    )
    torch.testing.assert_close(
        snr_loss_weight(snr, prediction_type="v_prediction", gamma=5.0),
        torch.tensor([0.5 / 1.5, 5.0 / 6.0, 5.0 / 21.0]),
    )
    assert torch.equal(snr_loss_weight(snr, prediction_type="epsilon", gamma=None), torch.ones(3))
    with pytest.raises(ValueError, match="x0"):
        snr_loss_weight(snr, prediction_type="x0", gamma=5.0)
