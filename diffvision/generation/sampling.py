"""Image sampling from a trained :class:`~diffvision.generation.model.DDPMModel`.

One reverse loop over the diffusion core's samplers (DDPM, DDIM, DPM-Solver++) with three optional
modifications:

- **Classifier-free guidance** (Ho & Salimans 2022, eq. 6): ``ε̃ = ε(x, ∅) + s (ε(x, y) − ε(x, ∅))``
  applied to the mean channels (any prediction type, as it is linear); learned variance channels
  are taken from the conditional branch (as GLIDE does). ``s = 1`` is plain conditional sampling.
- **SDEdit** (Meng et al. 2022, arXiv:2108.01073, Sec. 3, Alg. 1): start from the guide image
  noised to ``t₀ = strength · T`` by q(x_{t₀}|x_0) and run only the sampler steps with ``t ≤ t₀``
  (the diffusers img2img convention for how many of ``num_steps`` are used), as a grid of their own
  (DPM-Solver++ lowers its order on the last steps when that grid is shorter than 15).
- **ILVR** (Choi et al. 2021, eq. 7 / Alg. 1): after each step, the final one included,
  ``x_{t-1} ← φ_N(y_{t-1}) + x_{t-1} − φ_N(x_{t-1})`` with ``y_{t-1} ~ q(y_{t-1}|y)`` of the
  reference image (``y_0 = y``) and ``φ_N`` a linear low-pass filter: ``N×N`` average pooling
  then nearest up-sampling, an exact projection (φ∘φ = φ), so the result satisfies
  ``φ_N(x_{t-1}) = φ_N(y_{t-1})`` exactly.

With ``sampler="ddpm"`` a UNet with learned variance samples with its own variance
Σ_θ = exp(v log β + (1 − v) log β̃) of the (strided) step (Nichol & Dhariwal 2021, eq. 15).
All noise comes from one CPU ``torch.Generator``, so results are reproducible for a seed whatever
the device. Per batch the draws are, in order: x_T, then per step the sampler's noise (stochastic
samplers, the last step included) followed by ILVR's y_{t'} (steps with t' ≥ 0).

Everything runs through the core loop :func:`diffvision.diffusion.sample`: guidance is its
``model_fn``, SDEdit its explicit ``timesteps`` (the tail of the grid), ILVR its
``step_callback``, and the generator's draws its ``noise_fn``.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from diffvision.diffusion.forward import add_noise
from diffvision.diffusion.sampling import DEFAULT_SPACING, SAMPLERS, sample
from diffvision.diffusion.timesteps import make_timesteps
from diffvision.generation.model import DDPMModel

__all__ = ["SAMPLER_NAMES", "generate", "guided_model_output", "low_pass"]

logger = logging.getLogger(__name__)

SAMPLER_NAMES = tuple(SAMPLERS)
DDPMVariance = Literal["learned", "fixed_small", "fixed_large"]


def low_pass(x: Tensor, factor: int) -> Tensor:
    """ILVR's φ_N: ``N×N`` average pooling, then nearest up-sampling back to the input size.

    A linear projection (φ∘φ = φ): the mean of every ``N×N`` block.

    Args:
        x: ``(B, C, H, W)`` images.
        factor: the down-sampling factor ``N`` (1 = identity); must divide ``H`` and ``W``.
    """
    if factor < 1 or x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"ILVR factor {factor} must be >= 1 and divide the size {x.shape[-2:]}")
    if factor == 1:
        return x
    return F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="nearest")


def guided_model_output(
    model: DDPMModel, x_t: Tensor, t: Tensor, y: Tensor | None, *, guidance_scale: float
) -> Tensor:
    """UNet output with classifier-free guidance on the mean channels.

    Args:
        model: the DDPM (its UNet must have a null class for ``guidance_scale != 1``).
        x_t: ``(B, C, S, S)``; ``t``: ``(B,)`` model timesteps; ``y``: ``(B,)`` labels or ``None``.
        guidance_scale: ``s`` of Ho & Salimans (1 = no guidance).

    Returns:
        ``(B, C or 2C, S, S)``.
    """
    unet = model.unet
    if guidance_scale == 1.0 or y is None:
        return unet(x_t, t, y)
    if not unet.null_class:
        raise ValueError("classifier-free guidance needs a UNet trained with a null class")
    null = torch.full_like(y, unet.num_classes)
    out = unet(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
    cond, uncond = out.chunk(2)
    c = x_t.shape[1]
    mean = uncond[:, :c] + guidance_scale * (cond[:, :c] - uncond[:, :c])
    return torch.cat([mean, cond[:, c:]], dim=1)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device):
    """A draw from the CPU ``generator`` moved to ``device`` (the same numbers on every device)."""
    return torch.randn(shape, generator=generator).to(device)


@torch.no_grad()
def generate(
    model: DDPMModel,
    *,
    num_samples: int,
    sampler: str = "ddim",
    num_steps: int = 50,
    eta: float = 0.0,
    order: int = 2,
    variance: DDPMVariance | None = None,
    guidance_scale: float = 1.0,
    labels: Tensor | None = None,
    clip_denoised: bool = True,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    init_image: Tensor | None = None,
    strength: float = 1.0,
    ilvr_reference: Tensor | None = None,
    ilvr_factor: int = 4,
) -> Tensor:
    """Sample ``num_samples`` images.

    Args:
        model: the trained DDPM (use the EMA weights for quality).
        num_samples: ``N``.
        sampler: ``"ddpm"``, ``"ddim"`` or ``"dpm_solver++"``.
        num_steps: model evaluations over the full chain (fewer with ``strength < 1``).
        eta: DDIM's η.
        order: DPM-Solver++ order.
        variance: DDPM step variance; default ``"learned"`` for UNets with learned variance,
            else ``"fixed_small"`` (β̃).
        guidance_scale: classifier-free guidance scale ``s``.
        labels: ``(N,)`` class labels for a class-conditional UNet; ``None`` = the null class if
            the UNet has one, else ``arange(N) % num_classes``.
        clip_denoised: clamp x̂_0 to [-1, 1] at every step.
        generator: CPU generator for the initial and per-step noise.
        batch_size: images per forward pass (default all).
        init_image: SDEdit guide, ``(N or 1, C, S, S)`` in [-1, 1].
        strength: SDEdit ``t₀ / T`` in (0, 1] (1 = from pure noise; ignored without init_image).
        ilvr_reference: ILVR reference, ``(N or 1, C, S, S)`` in [-1, 1].
        ilvr_factor: ILVR down-sampling factor ``N``.

    Returns:
        ``(N, C, S, S)`` float32 images in [-1, 1] on the model's device.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; one of {list(SAMPLERS)}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1], got {strength}")
    unet = model.unet
    device = model.device
    sched = model.schedule.to(device)
    c, s = unet.in_channels, unet.image_size
    if variance is None:
        variance = "learned" if unet.learn_sigma else "fixed_small"
    if variance not in ("learned", "fixed_small", "fixed_large"):
        raise ValueError(f"variance must be learned/fixed_small/fixed_large, got {variance!r}")
    if variance == "learned" and not unet.learn_sigma:
        raise ValueError("variance='learned' needs a UNet with learn_sigma=True")
    if labels is None and unet.num_classes is not None and not unet.null_class:
        labels = torch.arange(num_samples) % unet.num_classes
    if labels is not None and len(labels) != num_samples:
        raise ValueError(f"got {len(labels)} labels for {num_samples} samples")
    learned = sampler == "ddpm" and variance == "learned"  # the model_fn keeps the v channels

    grid = make_timesteps(model.num_timesteps, num_steps, DEFAULT_SPACING[sampler])
    if init_image is not None and strength < 1.0:
        grid = grid[grid <= int(strength * model.num_timesteps) - 1]
        if len(grid) == 0:
            raise ValueError(f"strength {strength} leaves no sampling step of {num_steps}")
    batch_size = batch_size or num_samples
    outputs = []
    for lo in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - lo)
        y = None if labels is None else labels[lo : lo + n].to(device).long()
        shape = (n, c, s, s)
        x = _randn(shape, generator, device)
        if init_image is not None and strength < 1.0:
            x = add_noise(sched, _expand(init_image, lo, n).to(device), x, int(grid[0]))
        callback = None
        if ilvr_reference is not None:
            ref = _expand(ilvr_reference, lo, n).to(device)
            callback = _ilvr_callback(sched, grid, ref, ilvr_factor, generator)

        def model_fn(x_t: Tensor, t: Tensor, y: Tensor | None = y) -> Tensor:
            out = guided_model_output(model, x_t, t, y, guidance_scale=guidance_scale)
            return out if learned else out[:, :c]

        outputs.append(
            sample(
                model_fn,
                x,
                sched,
                sampler=sampler,
                timesteps=grid,
                eta=eta,
                order=order,
                variance=variance,
                prediction_type=model.prediction_type,
                clip=1.0 if clip_denoised else None,
                noise_fn=lambda i, shape=shape: _randn(shape, generator, device),
                step_callback=callback,
            )
        )
    return torch.cat(outputs).float().clamp(-1, 1)


def _expand(images: Tensor, lo: int, n: int) -> Tensor:
    if images.ndim != 4:
        raise ValueError(f"guide/reference images must be (N, C, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 1:
        return images.expand(n, -1, -1, -1)
    return images[lo : lo + n]


def _ilvr_callback(sched, grid: Tensor, reference: Tensor, factor: int, generator):
    """ILVR as a step callback: x_{t'} ← x_{t'} − φ(x_{t'}) + φ(y_{t'}), y_{t'} ~ q(y_{t'}|y)."""
    prev = grid[1:].tolist() + [-1]

    def callback(i: int, t: int, x_prev: Tensor, model_output: Tensor) -> Tensor:
        y_prev = reference  # y_0 = y at the clean end
        if prev[i] >= 0:
            noise = _randn(tuple(x_prev.shape), generator, x_prev.device)
            y_prev = add_noise(sched, reference, noise, prev[i])
        return x_prev - low_pass(x_prev, factor) + low_pass(y_prev, factor)

    return callback
