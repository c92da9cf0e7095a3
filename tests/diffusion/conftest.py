"""Shared helpers for the diffusion-core tests: the exact ε-model of Gaussian data.

For data x_0 ~ N(0, s² I), x_t ~ N(0, v_t I) with v_t = ᾱ_t s² + 1 - ᾱ_t, and the optimal
ε-prediction E[ε | x_t] is linear: ε*(x_t, t) = √(1 - ᾱ_t) x_t / v_t. The probability-flow ODE maps
x_t to x_t' = x_t √(v_t' / v_t); in particular x_0 = x_T s / √v_T (taking ᾱ_0 → 1 at the clean end).
"""

from __future__ import annotations

import pytest
import torch

from diffvision.diffusion import NoiseSchedule


class GaussianOracle:
    """The exact ε-, x_0- and v-predictions for N(0, s² I) data under ``schedule``."""

    def __init__(self, schedule: NoiseSchedule, s: float) -> None:
        self.schedule = schedule
        self.s = s
        ac = schedule.alphas_cumprod
        self.variance = ac * s**2 + 1 - ac  # v_t, (T,)
        self._eps_coef = (1 - ac).sqrt() / self.variance
        self._x0_coef = ac.sqrt() * s**2 / self.variance
        # v = √ᾱ ε - √(1-ᾱ) x_0
        self._v_coef = ac.sqrt() * self._eps_coef - (1 - ac).sqrt() * self._x0_coef

    @staticmethod
    def _apply(coef: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if bool((t == t[0]).all()):  # the usual case: one timestep for the batch (cheaper)
            return coef[t[0]].to(x.dtype) * x
        return coef[t].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)) * x

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._apply(self._eps_coef, x, t)

    def x0(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._apply(self._x0_coef, x, t)

    def v(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._apply(self._v_coef, x, t)

    def model(self, prediction_type: str):
        return {"epsilon": self.eps, "sample": self.x0, "v_prediction": self.v}[prediction_type]

    def ode_map(self, x: torch.Tensor, t: int, t_target: int) -> torch.Tensor:
        """Exact probability-flow ODE map from time t to t_target (-1 = the clean data)."""
        v_target = self.s**2 if t_target < 0 else float(self.variance[t_target])
        return x * (v_target / float(self.variance[t])) ** 0.5


@pytest.fixture
def gaussian_oracle():
    return GaussianOracle
