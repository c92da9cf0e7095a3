"""The training loop: a small loop plus hooks (the shape of detectron2's ``SimpleTrainer``).

:class:`Trainer` runs ``before_train``, then for each iteration ``before_step`` → :meth:`run_step`
→ ``after_step`` on every hook, and ``after_train`` at the end (also after an error, with
``trainer.completed`` telling whether all iterations ran). One step: next batch → losses →
finite check → backward → gradient clipping → optimizer and LR-scheduler step.

To go beyond it, write a :class:`HookBase` (periodic work) rather than subclassing the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from typing import Literal

import torch
from torch import nn

from diffvision.utils import comm
from diffvision.utils.seeding import Stream, derive_seed, seed_process_rngs

__all__ = ["GradientClipping", "HookBase", "Trainer"]

logger = logging.getLogger(__name__)


class HookBase:
    """Periodic work around the training loop.

    Each method receives nothing; the trainer is reachable as ``self.trainer`` (set by
    :meth:`Trainer.register_hooks`). ``trainer.iter`` is the iteration being run (0-based),
    ``trainer.max_iter`` the total and ``trainer.metrics`` the latest scalars of :meth:`run_step`.
    """

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class GradientClipping:
    """Gradient clipping (detectron2's ``SOLVER.CLIP_GRADIENTS`` semantics).

    Args:
        clip_type: ``full_model`` (one L2 norm over all parameters — DiffusionDet's choice),
            ``norm`` (one norm per parameter) or ``value`` (elementwise clamp).
        clip_value: the max norm or the max absolute value.
        norm_type: the p of the norm.
    """

    def __init__(
        self,
        *,
        clip_type: Literal["full_model", "norm", "value"],
        clip_value: float,
        norm_type: float = 2.0,
    ):
        if clip_type not in ("full_model", "norm", "value"):
            raise ValueError(
                f"Unknown CLIP_TYPE '{clip_type}'; expected 'full_model', 'norm' or 'value'."
            )
        self.clip_type = clip_type
        self.clip_value = clip_value
        self.norm_type = norm_type

    def __call__(self, params: Sequence[nn.Parameter]) -> torch.Tensor | None:
        params = [p for p in params if p.grad is not None]
        if self.clip_type == "full_model":
            return nn.utils.clip_grad_norm_(params, self.clip_value, self.norm_type)
        if self.clip_type == "norm":
            for p in params:
                nn.utils.clip_grad_norm_([p], self.clip_value, self.norm_type)
        else:
            nn.utils.clip_grad_value_(params, self.clip_value)
        return None


class Trainer:
    """Runs iterations ``start_iter .. max_iter-1`` of ``model`` on ``data_loader``.

    Args:
        model: the model to train (possibly DDP-wrapped); ``model(batch)`` returns a dict of losses.
        optimizer: the optimizer over the model's trainable parameters.
        data_loader: an infinite iterable of batches.
        max_iter: total number of iterations of the run.
        start_iter: first iteration to run (non-zero when resuming).
        scheduler: a per-iteration LR scheduler (stepped after each optimizer step).
        grad_clip: optional :class:`GradientClipping`.
        amp_dtype: ``torch.bfloat16``/``torch.float16`` to train under autocast, or None.
        seed: when given, the process RNGs (Python, NumPy, torch) are reseeded before every step
            from the ``STEP`` stream at ``(iteration, rank)``, so draws a model does not take
            from per-sample generators (dropout) do not depend on what ran before: a resumed run
            repeats them.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: Iterable,
        max_iter: int,
        start_iter: int = 0,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        grad_clip: GradientClipping | None = None,
        amp_dtype: torch.dtype | None = None,
        seed: int | None = None,
    ):
        self.seed = seed
        self.model = model
        self.optimizer = optimizer
        self.data_loader = data_loader
        self.max_iter = max_iter
        self.start_iter = start_iter
        self.iter = start_iter
        self.scheduler = scheduler
        self.grad_clip = grad_clip
        self.amp_dtype = amp_dtype
        self.completed = False
        self.metrics: dict[str, float] = {}
        self._hooks: list[HookBase] = []
        self._data_iter = None
        device_type = next(iter(model.parameters())).device.type
        self._autocast_device = device_type
        use_scaler = amp_dtype == torch.float16 and device_type == "cuda"
        self.grad_scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self._params = [p for g in optimizer.param_groups for p in g["params"]]

    def register_hooks(self, hooks: Sequence[HookBase | None]) -> None:
        for hook in hooks:
            if hook is None:
                continue
            hook.trainer = self
            self._hooks.append(hook)

    def train(self) -> None:
        """Run the loop; hooks' ``after_train`` runs even when a step raises."""
        logger.info("Starting training from iteration %d of %d", self.start_iter, self.max_iter)
        self.completed = False
        try:
            for h in self._hooks:
                h.before_train()
            for it in range(self.start_iter, self.max_iter):
                self.iter = it
                for h in self._hooks:
                    h.before_step()
                self.run_step()
                for h in self._hooks:
                    h.after_step()
            self.completed = True
        finally:
            for h in self._hooks:
                h.after_train()

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self._autocast_device, dtype=self.amp_dtype)

    def run_step(self) -> None:
        """One optimisation step; raises FloatingPointError on a non-finite loss."""
        if self._data_iter is None:
            self._data_iter = iter(self.data_loader)
        start = time.perf_counter()
        batch = next(self._data_iter)
        data_time = time.perf_counter() - start
        if self.seed is not None:
            seed_process_rngs(derive_seed(self.seed, Stream.STEP, self.iter, comm.get_rank()))

        with self._autocast():
            loss_dict = self.model(batch)
        if not isinstance(loss_dict, dict) or not loss_dict:
            raise TypeError(
                "In training mode the model must return a non-empty dict of losses, got "
                f"{type(loss_dict).__name__}."
            )
        losses = sum(loss_dict.values())
        if not torch.isfinite(losses):
            detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in loss_dict.items())
            raise FloatingPointError(
                f"Loss became non-finite at iteration {self.iter}: {detail}. Training stopped; "
                "the last checkpoint written before this iteration is intact. Try a lower "
                "SOLVER.BASE_LR, gradient clipping (SOLVER.CLIP_GRADIENTS.ENABLED True), or check "
                "the training data."
            )

        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            losses.backward()
        grad_norm = self.grad_clip(self._params) if self.grad_clip is not None else None
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

        reduced = comm.reduce_dict({k: v.detach() for k, v in loss_dict.items()})
        metrics = {k: float(v) for k, v in reduced.items()}
        metrics["total_loss"] = sum(metrics.values())
        metrics["lr"] = lr
        metrics["data_time"] = data_time
        metrics["time"] = time.perf_counter() - start
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        self.metrics = metrics
