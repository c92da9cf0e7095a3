"""Noise schedules: the variance-preserving forward process as a value.

A :class:`NoiseSchedule` holds ``betas`` (shape ``[T]``, float64) and everything derived from them
(``alphas_cumprod`` = ᾱ_t, posterior coefficients, ...). Samplers receive a schedule; they never
build one (schedule ≠ sampler, unlike diffusers' per-scheduler ``beta_schedule`` chains).

Named schedules (:func:`get_schedule`):

- ``linear``: Ho et al. 2020 (DDPM, arXiv:2006.11239, Sec. 4): β linear from 1e-4 to 0.02 for
  T = 1000, with both ends scaled by ``1000 / T`` as in improved-diffusion's
  ``get_named_beta_schedule``.
- ``scaled_linear``: linear in √β from √0.00085 to √0.012 (Latent/Stable Diffusion).
- ``cosine``: Nichol & Dhariwal 2021, eq. 17, s = 0.008, β clipped at 0.999; evaluated exactly as
  DiffusionDet does (float64 grid ``linspace(0, T, T + 1)``).
- ``sqrt``: Li et al. 2022 (Diffusion-LM, App. A): ᾱ(t) = 1 - √(t/T + 0.0001), β clipped at 0.999.

Respacing (improved-diffusion ``respace.py``, Nichol & Dhariwal 2021, Sec. 4): keeping a subset of
timesteps τ_1 < ... < τ_S gives the schedule with β'_i = 1 - ᾱ_{τ_i} / ᾱ_{τ_{i-1}}, whose
``alphas_cumprod`` equals the original one at the kept steps; ``timestep_map`` maps its indices back
to the original timesteps (what a model trained on the full chain expects).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["SCHEDULES", "NoiseSchedule", "get_schedule"]


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete variance-preserving noise schedule (a value: never mutated).

    Notation (Ho et al. 2020): α_t = 1 - β_t, ᾱ_t = ∏_{s≤t} α_s, and
    q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I) (eq. 4). Timesteps are 0-based: t ∈ {0, ..., T-1}.

    Args:
        betas: (T,) β_t in (0, 1]; stored as float64.
        name: Label for messages and reprs.
        timestep_map: (T,) long. The original timestep each index stands for; the identity unless
            the schedule came from :meth:`respace`. Samplers call the model with
            ``timestep_map[t]``.
    """

    betas: Tensor
    name: str = "custom"
    timestep_map: Tensor | None = None
    alphas_cumprod: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(
                f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}"
            )
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        if self.timestep_map is None:
            timestep_map = torch.arange(betas.numel(), device=betas.device)
        else:
            timestep_map = torch.as_tensor(self.timestep_map, dtype=torch.long, device=betas.device)
            if timestep_map.shape != betas.shape:
                raise ValueError(
                    f"timestep_map shape {tuple(timestep_map.shape)} must equal betas shape "
                    f"{tuple(betas.shape)}"
                )
        # A frozen dataclass: set the normalised fields once, here.
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "timestep_map", timestep_map)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))
        object.__setattr__(self, "_copies", {})  # device → this schedule on it (see .to)

    # ------------------------------------------------------------------ basics
    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return self.betas.numel()

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, num_timesteps={self.num_timesteps})"

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """The same schedule with its tensors on ``device`` (still float64).

        Returns ``self`` when already there; copies are made once per device and kept, so
        callers simply write ``schedule.to(x.device)`` at every use (no per-task cache).
        """
        device = torch.device(device)
        if device == self.device:
            return self
        key = str(device)
        if key not in self._copies:
            copy = NoiseSchedule(
                betas=self.betas.to(device),
                name=self.name,
                timestep_map=self.timestep_map.to(device),
            )
            copy._copies[str(self.device)] = self  # and back again without a new copy
            self._copies[key] = copy
        return self._copies[key]

    # --------------------------------------------------------- derived values
    @property
    def alphas(self) -> Tensor:
        """(T,) α_t = 1 - β_t."""
        return 1.0 - self.betas

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        """(T,) ᾱ_{t-1}, with ᾱ_{-1} = 1."""
        return torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])

    @property
    def sqrt_alphas_cumprod(self) -> Tensor:
        """(T,) √ᾱ_t, the signal scale α_t of the VP-SDE notation (Lu et al. 2022)."""
        return self.alphas_cumprod.sqrt()

    @property
    def sqrt_one_minus_alphas_cumprod(self) -> Tensor:
        """(T,) √(1 - ᾱ_t), the noise scale σ_t of Lu et al. 2022."""
        return (1.0 - self.alphas_cumprod).sqrt()

    @property
    def sqrt_recip_alphas_cumprod(self) -> Tensor:
        """(T,) √(1/ᾱ_t)."""
        return self.alphas_cumprod.rsqrt()

    @property
    def sqrt_recipm1_alphas_cumprod(self) -> Tensor:
        """(T,) √(1/ᾱ_t - 1)."""
        return (1.0 / self.alphas_cumprod - 1.0).sqrt()

    @property
    def log_snr(self) -> Tensor:
        """(T,) log(ᾱ_t / (1 - ᾱ_t)) = 2 λ_t (λ of Lu et al. 2022 is the half log-SNR)."""
        return torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)

    @property
    def posterior_variance(self) -> Tensor:
        """(T,) β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t (Ho et al. 2020, eq. 7); β̃_0 = 0."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> Tensor:
        """(T,) log β̃_t with β̃_0 replaced by β̃_1 (improved-diffusion's convention)."""
        var = self.posterior_variance
        if self.num_timesteps > 1:
            var = torch.cat([var[1:2], var[1:]])
        return torch.log(var.clamp(min=1e-20))

    @property
    def posterior_mean_coef1(self) -> Tensor:
        """(T,) coefficient of x_0 in μ̃_t(x_t, x_0) (Ho et al. 2020, eq. 7)."""
        return self.betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)

    @property
    def posterior_mean_coef2(self) -> Tensor:
        """(T,) coefficient of x_t in μ̃_t(x_t, x_0) (Ho et al. 2020, eq. 7)."""
        return (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)

    # -------------------------------------------------------------- respacing
    def respace(self, timesteps: Sequence[int] | Tensor) -> NoiseSchedule:
        """Keep only ``timesteps`` (any order, duplicates removed), as improved-diffusion does.

        The new schedule has S = len(unique(timesteps)) steps with
        β'_i = 1 - ᾱ_{τ_i} / ᾱ_{τ_{i-1}} (ᾱ_{τ_{-1}} = 1), so its ``alphas_cumprod`` equals
        ``self.alphas_cumprod[τ]``; ``timestep_map`` gives the original timestep of each index.

        Args:
            timesteps: Indices into this schedule, each in [0, T).

        Returns:
            The respaced schedule.
        """
        kept = torch.as_tensor(timesteps, dtype=torch.long).flatten().unique(sorted=True)
        if kept.numel() == 0 or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ValueError(
                f"respace timesteps must be non-empty and in [0, {self.num_timesteps}), "
                f"got {kept.tolist()}"
            )
        kept = kept.to(self.device)
        alphas_cumprod = self.alphas_cumprod[kept]
        prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        return NoiseSchedule(
            betas=1.0 - alphas_cumprod / prev,
            name=f"{self.name}[respaced {kept.numel()}]",
            timestep_map=self.timestep_map[kept],
        )


# ---------------------------------------------------------------------- builders
def _linear(num_timesteps: int) -> Tensor:
    scale = 1000.0 / num_timesteps  # improved-diffusion: keeps ᾱ_T comparable for any T
    if scale * 0.02 >= 1:
        raise ValueError(f"the linear schedule needs num_timesteps > 20, got {num_timesteps}")
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def _scaled_linear(num_timesteps: int) -> Tensor:
    return (
        torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), num_timesteps, dtype=torch.float64)
        ** 2
    )


def _cosine(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    # Nichol & Dhariwal 2021 eq. 17, on DiffusionDet's float64 grid; only β_{T-1} hits the clip.
    x = torch.linspace(0, num_timesteps, num_timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / num_timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return torch.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, max_beta)


def _sqrt(num_timesteps: int, s: float = 1e-4, max_beta: float = 0.999) -> Tensor:
    # Li et al. 2022 (Diffusion-LM): ᾱ(u) = 1 - sqrt(u + s), β from consecutive ratios.
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = 1 - torch.sqrt(u + s)
    return torch.clip(1 - alpha_bar[1:] / alpha_bar[:-1], 0, max_beta)


SCHEDULES: dict[str, Callable[[int], Tensor]] = {
    "linear": _linear,
    "scaled_linear": _scaled_linear,
    "cosine": _cosine,
    "sqrt": _sqrt,
}
"""Schedule name → function ``num_timesteps -> betas`` (float64, shape ``[T]``)."""


def get_schedule(name: str, num_timesteps: int = 1000) -> NoiseSchedule:
    """Build a named noise schedule.

    Args:
        name: One of ``linear``, ``scaled_linear``, ``cosine``, ``sqrt`` (see module docstring).
        num_timesteps: T ≥ 1.

    Returns:
        The :class:`NoiseSchedule` (float64 tensors on the CPU; use ``.to(device)``).

    Raises:
        ValueError: Unknown name or non-positive ``num_timesteps``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known schedules: {sorted(SCHEDULES)}")
    if int(num_timesteps) < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    return NoiseSchedule(betas=SCHEDULES[name](int(num_timesteps)), name=name)
