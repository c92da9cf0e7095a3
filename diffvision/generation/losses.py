"""Loss terms of DDPM training: the variational bound pieces and per-timestep weights.

- :func:`normal_kl`, :func:`discretized_gaussian_log_likelihood`: the terms of the variational
  lower bound L_vlb = L_0 + Σ_t L_{t-1} + L_T (Ho et al. 2020, eq. 5 and Sec. 3.3), with the decoder
  L_0 a Gaussian discretised to 256 bins on [-1, 1].
- :func:`learned_log_variance` (the diffusion core's, re-exported): Nichol & Dhariwal 2021
  (improved DDPM), eq. 15: the network outputs v ∈ [-1, 1] (mapped from its raw output r as
  v = (r + 1) / 2 in their code) and Σ_θ = exp(v log β_t + (1 - v) log β̃_t); sampling uses the
  same function in ``ddpm_step(variance="learned")``.
- :func:`vlb_terms`: L_{t-1} = KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t)) in bits/dim, with
  −log p_θ(x_0|x_1) at t = 0; improved DDPM's L_hybrid = L_simple + λ L_vlb (eq. 16, λ = 0.001)
  uses it with a stop-gradient on the mean so the VLB only trains the variance.
- :func:`snr_loss_weight`: Min-SNR-γ weighting (Hang et al. 2023, "Efficient Diffusion Training
  via Min-SNR Weighting Strategy", eq. 7 and Table 1): w_t = min(SNR_t, γ) / SNR_t for ε-prediction,
  min(SNR_t, γ) for x0-prediction and min(SNR_t, γ) / (SNR_t + 1) for v-prediction, so that the
  effective weight on the x0-error is min(SNR_t, γ) in all three cases.

The numerics follow improved-diffusion's ``losses.py`` (https://github.com/openai/improved-diffusion)
so that the bits/dim values are comparable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffvision.diffusion.ddpm import learned_log_variance
from diffvision.diffusion.parameterization import PredictionType, check_prediction_type

__all__ = [
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "learned_log_variance",
    "mean_flat",
    "normal_kl",
    "snr_loss_weight",
    "vlb_terms",
]


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all but the first dimension: ``(B, ...) -> (B,)``."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats.

    KL = ½ (−1 + logvar2 − logvar1 + e^{logvar1 − logvar2} + (mean1 − mean2)² e^{−logvar2}).
    All arguments broadcast against each other.
    """
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Φ(x) via the tanh approximation ½(1 + tanh(√(2/π)(x + 0.044715 x³))) (as in their code)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, *, means: Tensor, log_scales: Tensor) -> Tensor:
    """log-likelihood of data ``x`` ∈ [-1, 1] (256 levels) under a discretised Gaussian.

    Each value owns the bin [x − 1/255, x + 1/255]; the two extreme bins extend to ∓∞
    (Ho et al. 2020, eq. 13).

    Args:
        x: ``(B, ...)`` data scaled from uint8 to [-1, 1].
        means: Gaussian means, same shape.
        log_scales: log standard deviations, broadcastable.

    Returns:
        Elementwise log-probabilities (nats), same shape as ``x``.
    """
    if x.shape != means.shape:
        raise ValueError(f"x shape {tuple(x.shape)} != means shape {tuple(means.shape)}")
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


def vlb_terms(
    *,
    x0: Tensor,
    true_mean: Tensor,
    true_log_variance: Tensor,
    model_mean: Tensor,
    model_log_variance: Tensor,
    is_first_step: Tensor,
) -> Tensor:
    """Per-sample VLB term L_{t-1} in bits per dimension (Ho et al. 2020, eq. 5).

    Args:
        x0: ``(B, ...)`` clean data in [-1, 1].
        true_mean, true_log_variance: the posterior q(x_{t-1}|x_t, x_0) (broadcastable).
        model_mean, model_log_variance: p_θ(x_{t-1}|x_t) (broadcastable).
        is_first_step: ``(B,)`` bool, True where t = 0 (then the decoder NLL −log p(x_0|x_1)).

    Returns:
        ``(B,)`` KL (t > 0) or decoder NLL (t = 0), averaged over dimensions, in bits.
    """
    kl = mean_flat(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance))
    nll = -mean_flat(
        discretized_gaussian_log_likelihood(
            x0, means=model_mean, log_scales=0.5 * model_log_variance
        )
    )
    return torch.where(is_first_step, nll, kl) / math.log(2.0)


def snr_loss_weight(snr: Tensor, *, prediction_type: PredictionType, gamma: float | None) -> Tensor:
    """Per-timestep MSE weight for simple (``gamma=None``) or Min-SNR-γ weighting.

    Args:
        snr: ``(B,)`` SNR_t = ᾱ_t / (1 − ᾱ_t).
        prediction_type: what the network predicts: ``"epsilon"``, ``"sample"`` (x0) or
            ``"v_prediction"`` (the diffusion core's names).
        gamma: the clamp γ of Hang et al. 2023 (they use 5); ``None`` gives weight 1 (L_simple).

    Returns:
        ``(B,)`` weights: min(SNR, γ)/SNR (ε), min(SNR, γ) (sample), min(SNR, γ)/(SNR + 1) (v).
    """
    check_prediction_type(prediction_type)
    if gamma is None:
        return torch.ones_like(snr)
    if gamma <= 0:
        raise ValueError(f"min-SNR gamma must be > 0, got {gamma}")
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "sample":
        return clipped
    return clipped / (snr + 1.0)
