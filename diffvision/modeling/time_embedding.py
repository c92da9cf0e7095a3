"""Sinusoidal timestep embeddings (Vaswani et al. 2017, as used by Ho et al. 2020 and ADM).

The layout ``[cos(t·ω_0..ω_{h-1}), sin(t·ω_0..ω_{h-1})]`` with ``ω_k = max_period^(-k/h)`` and
``h = dim // 2`` is the one of openai improved-diffusion / guided-diffusion
(``nn.timestep_embedding``), so UNets loading their checkpoints see identical inputs.
"""

from __future__ import annotations

import math

import torch

__all__ = ["timestep_embedding"]


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, *, max_period: float = 10000.0
) -> torch.Tensor:
    """Embed (possibly fractional) timesteps with sinusoids.

    Args:
        timesteps: ``(B,)`` timesteps, one per sample; integers or floats.
        dim: embedding width ``D``.
        max_period: the longest period ``max_period`` of the sinusoids.

    Returns:
        ``(B, D)`` float32 tensor ``[cos(t ω), sin(t ω)]`` (zero-padded by one column if ``D`` is
        odd), with ``ω_k = exp(-ln(max_period) · k / (D // 2))``.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape (B,), got {tuple(timesteps.shape)}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=timesteps.device)
        / half
    )  # (D/2,)
    args = timesteps[:, None].float() * freqs[None]  # (B, D/2)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*(D/2))
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding
