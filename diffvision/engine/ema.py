"""Exponential moving average of model weights (Polyak averaging), as used for sampling in DDPM
(Ho et al. 2020, arXiv:2006.11239, Sec. 4: EMA decay 0.9999) and optionally by DiffusionDet
(``MODEL_EMA``).

``ema ← decay · ema + (1 − decay) · θ`` for floating-point parameters and buffers; integer buffers
are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """Keeps a frozen copy of ``model`` whose weights track an exponential moving average.

    Args:
        model: the model being trained (unwrapped).
        decay: the EMA decay in [0, 1).
        device: where to keep the EMA copy (None: the model's device).
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.999, device: str | None = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}.")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        if device:
            self.model.to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards the current weights of ``model``."""
        current = model.state_dict()
        for name, ema_value in self.model.state_dict().items():
            value = current[name].detach().to(ema_value.device)
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(self.decay).add_(value.to(ema_value.dtype), alpha=1.0 - self.decay)
            else:
                ema_value.copy_(value)

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Set the EMA weights equal to ``model``'s."""
        self.model.load_state_dict(model.state_dict())

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.model.load_state_dict(state_dict)
