"""DPM-Solver++ multistep (orders 1-3), the data-prediction solver of the diffusion ODE.

Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", 2022. Notation: α_t = √ᾱ_t, σ_t = √(1 - ᾱ_t), λ_t = log(α_t / σ_t) (half
log-SNR); x̂_0 = x_θ(x_t, t) the data prediction. A step goes from s = t_{i-1} to t = t_i (λ grows),
with h = λ_t - λ_s. Using the x̂_0 of the last k steps m0 = x̂_0(s), m1, m2 (older):

- order 1 (= DDIM with η = 0; Alg. 2 first step):
  x_t = (σ_t / σ_s) x_s - α_t (e^{-h} - 1) m0
- order 2, "DPM-Solver++(2M)" (Alg. 2), with h_0 = λ_s - λ_{s1}, r0 = h_0 / h, D1 = (m0 - m1) / r0:
  x_t = (σ_t / σ_s) x_s - α_t (e^{-h} - 1) (m0 + ½ D1)
- order 3 (the third-order multistep update of the reference implementation), r1 = h_1 / h,
  D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),
  D2 = (D1_0 - D1_1) / (r0 + r1):
  x_t = (σ_t / σ_s) x_s - α_t (e^{-h} - 1) m0 + α_t ((e^{-h} - 1) / h + 1) D1
        - α_t ((e^{-h} - 1 + h) / h² - ½) D2

The final step lands on σ = 0 (ᾱ = 1, t = -1): h = ∞ there, so it is always first order and
returns x̂_0. Timesteps default to the reference implementation's discrete time-uniform grid
``round(linspace(0, T - 1, N + 1))[::-1][:-1]`` (``spacing="dpm_solver"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor

from ._utils import Coef, Timestep, alpha_bar, as_timesteps, cast, log, sqrt, step_alpha_bars
from .base import resolve_timesteps
from .parameterization import PredictionType, check_prediction_type, predict_x0_eps
from .schedule import NoiseSchedule
from .timesteps import Spacing, previous_timesteps

__all__ = ["DPMSolverOutput", "DPMSolverPPSampler", "dpm_solver_pp_step"]

History = Sequence[tuple[Timestep, Tensor]]
"""Earlier (timestep, x̂_0) pairs, oldest first."""


class DPMSolverOutput(NamedTuple):
    """Result of one DPM-Solver++ step.

    Attributes:
        prev_sample: (B, ...) x at the step's target.
        pred_x0: (B, ...) x̂_0 at the step's start (after clipping, if any).
        history: The (timestep, x̂_0) pairs to pass to the next step (oldest first, at most 3).
    """

    prev_sample: Tensor
    pred_x0: Tensor
    history: tuple[tuple[Timestep, Tensor], ...]


def _half_log_snr(a: Coef) -> Coef:
    return 0.5 * (log(a) - log(1.0 - a))


def dpm_solver_pp_step(
    schedule: NoiseSchedule,
    model_output: Tensor,
    x_t: Tensor,
    t: Timestep,
    t_prev: Timestep,
    *,
    history: History = (),
    order: int = 2,
    prediction_type: PredictionType = "epsilon",
    clip: float | None = None,
) -> DPMSolverOutput:
    """One multistep DPM-Solver++ step from ``t`` to ``t_prev`` (a pure function).

    The order used is ``min(order, len(history) + 1)``, and 1 when ``t_prev < 0`` (σ = 0).

    Args:
        schedule: The noise schedule.
        model_output: (B, ...) model output at (x_t, t).
        x_t: (B, ...) current sample (any shape, float32 or float64).
        t: int or (B,) current timesteps in [0, T).
        t_prev: int or (B,) target timesteps < t; negative = the clean end.
        history: (timestep, x̂_0) of the previous steps, oldest first (the ``history`` of the
            previous step's output; empty at the first step).
        order: Maximum solver order, 1, 2 or 3.
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
        clip: If set, clamp x̂_0 to [-clip, clip] (the "thresholding" of Lu et al.,
            arXiv:2211.01095, Sec. 4).

    Returns:
        ``DPMSolverOutput(prev_sample, pred_x0, history)``.
    """
    check_prediction_type(prediction_type)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be one of [1, 2, 3], got {order}")
    # 1. data prediction m0 = x̂_0(x_s, s)
    x0, _ = predict_x0_eps(schedule, model_output, x_t, t, prediction_type)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    new_history = (*tuple(history), (t, x0))[-3:]
    final = bool((as_timesteps(t_prev, schedule.device) < 0).any())
    order = 1 if final else min(order, len(history) + 1)

    # 2. α, σ at s (start) and t (target); e^{-h} = σ_t α_s / (α_t σ_s) stays finite at σ_t = 0
    a_s, a_t = step_alpha_bars(schedule, t, t_prev, x_t)
    alpha_t, sigma_t = sqrt(a_t), sqrt(1.0 - a_t)
    alpha_s, sigma_s = sqrt(a_s), sqrt(1.0 - a_s)
    exp_neg_h = sigma_t * alpha_s / (alpha_t * sigma_s)
    # first-order part, shared by all orders
    x_prev = cast(sigma_t / sigma_s, x_t) * x_t + cast(alpha_t * (1.0 - exp_neg_h), x_t) * x0
    if order == 1:
        return DPMSolverOutput(x_prev, x0, new_history)

    # 3. multistep corrections from earlier data predictions
    lam_s, lam_t = _half_log_snr(a_s), _half_log_snr(a_t)
    h = lam_t - lam_s
    t1, m1 = history[-1]
    r0 = (lam_s - _half_log_snr(alpha_bar(schedule, t1, x_t))) / h
    d1_0 = cast(1.0 / r0, x_t) * (x0 - m1)
    if order == 2:
        coef = 0.5 * alpha_t * (1.0 - exp_neg_h)
        return DPMSolverOutput(x_prev + cast(coef, x_t) * d1_0, x0, new_history)

    t2, m2 = history[-2]
    lam_s1 = _half_log_snr(alpha_bar(schedule, t1, x_t))
    r1 = (lam_s1 - _half_log_snr(alpha_bar(schedule, t2, x_t))) / h
    d1_1 = cast(1.0 / r1, x_t) * (m1 - m2)
    d1 = d1_0 + cast(r0 / (r0 + r1), x_t) * (d1_0 - d1_1)
    d2 = cast(1.0 / (r0 + r1), x_t) * (d1_0 - d1_1)
    phi_1 = exp_neg_h - 1.0  # e^{-h} - 1
    coef_d1 = alpha_t * (phi_1 / h + 1.0)
    coef_d2 = alpha_t * ((phi_1 + h) / h**2 - 0.5)
    x_prev = x_prev + cast(coef_d1, x_t) * d1 - cast(coef_d2, x_t) * d2
    return DPMSolverOutput(x_prev, x0, new_history)


class DPMSolverPPSampler:
    """Multistep DPM-Solver++ over ``num_steps`` timesteps; usable right after creation.

    Steps use lower orders while the history fills up (warm-up) and, with ``lower_order_final``
    and fewer than 15 steps, on the last steps (as the reference implementation and diffusers do,
    for stability at few steps); the last step, onto σ = 0, is always first order.

    Args:
        schedule: The noise schedule the model was trained with.
        num_steps: N model evaluations.
        order: 1, 2 (DPM-Solver++(2M)) or 3.
        spacing: Timestep spacing; default ``dpm_solver`` = the reference grid.
        lower_order_final: Lower the order on the final steps when N < 15.
        prediction_type: What the model predicts.
        clip: Optional clamp of x̂_0 to [-clip, clip].
        timesteps: Optional explicit (N,) descending grid in [0, T); replaces ``num_steps`` and
            ``spacing``.

    Attributes:
        timesteps: (N,) descending timesteps at which the model is evaluated.
        prev_timesteps: (N,) the target of each step; the last is -1 (the clean end).
        orders: The solver order of each step.
    """

    stochastic = False

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        num_steps: int | None = None,
        order: int = 2,
        spacing: Spacing = "dpm_solver",
        lower_order_final: bool = True,
        prediction_type: PredictionType = "epsilon",
        clip: float | None = None,
        timesteps: Tensor | None = None,
    ) -> None:
        check_prediction_type(prediction_type)
        if order not in (1, 2, 3):
            raise ValueError(f"order must be one of [1, 2, 3], got {order}")
        self.schedule = schedule
        self.order = order
        self.prediction_type = prediction_type
        self.clip = clip
        self.timesteps = resolve_timesteps(schedule.num_timesteps, num_steps, spacing, timesteps)
        self.prev_timesteps = previous_timesteps(self.timesteps)
        n = self.timesteps.numel()
        orders = []
        for i in range(n):
            step_order = min(order, i + 1)
            if lower_order_final and n < 15:
                step_order = min(step_order, n - i)
            if self.prev_timesteps[i] < 0:
                step_order = 1
            orders.append(step_order)
        self.orders: tuple[int, ...] = tuple(orders)

    @property
    def num_steps(self) -> int:
        return self.timesteps.numel()

    def step(
        self, model_output: Tensor, i: int, x_t: Tensor, *, history: History = ()
    ) -> DPMSolverOutput:
        """Take step ``i``: ``timesteps[i]`` → ``prev_timesteps[i]`` with order ``orders[i]``.

        Args:
            model_output: (B, ...) model output at (x_t, timesteps[i]).
            i: Step index in [0, N).
            x_t: (B, ...) current sample.
            history: The ``history`` returned by step ``i - 1`` (empty for i = 0).

        Returns:
            ``DPMSolverOutput(prev_sample, pred_x0, history)``.
        """
        if len(history) < self.orders[i] - 1:
            raise ValueError(
                f"step {i} has order {self.orders[i]} and needs {self.orders[i] - 1} earlier "
                f"x0 predictions in history, got {len(history)}"
            )
        return dpm_solver_pp_step(
            self.schedule,
            model_output,
            x_t,
            int(self.timesteps[i]),
            int(self.prev_timesteps[i]),
            history=history,
            order=self.orders[i],
            prediction_type=self.prediction_type,
            clip=self.clip,
        )

    def __repr__(self) -> str:
        return (
            f"DPMSolverPPSampler(num_steps={self.num_steps}, order={self.order}, "
            f"schedule={self.schedule})"
        )
