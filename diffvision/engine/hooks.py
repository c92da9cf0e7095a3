"""Standard hooks: EMA updates, periodic checkpoints, periodic evaluation, progress and metrics.

Registered in this order by :func:`diffvision.engine.run.train`, so that within one iteration the
EMA is updated before it is saved, and a checkpoint is on disk before an evaluation that might
fail.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from diffvision.engine.checkpoint import Checkpointer
from diffvision.engine.ema import ModelEMA
from diffvision.engine.trainer import HookBase
from diffvision.utils import comm

__all__ = [
    "EMAHook",
    "EvalHook",
    "MetricsWriter",
    "PeriodicCheckpointer",
    "ProgressLogger",
    "json_safe",
]

logger = logging.getLogger(__name__)


def json_safe(value):
    """``value`` with NaN/inf floats (also inside lists/dicts) replaced by "nan"/"inf"/"-inf"
    and NumPy / 0-d torch scalars turned into Python numbers."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class MetricsWriter:
    """Appends metrics to ``metrics.jsonl`` and TensorBoard (main process only).

    Every line is strict JSON: NaN and infinite values are written as the strings ``"nan"``,
    ``"inf"``, ``"-inf"`` (Python's bare ``NaN`` is not JSON).

    Args:
        output_dir: the run folder.
        use_tensorboard: also write TensorBoard event files (skipped if tensorboard is missing).
        start_iter: the iteration a (resumed or overwriting) training run starts at: rows of
            an earlier run with ``iteration >= start_iter`` are removed, so replayed iterations
            are not recorded twice. None (evaluation-only writers) keeps every row.
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        use_tensorboard: bool = True,
        start_iter: int | None = None,
    ):
        self.enabled = comm.is_main_process()
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = None
        if self.enabled and start_iter is not None:
            self._truncate(start_iter)
        if self.enabled and use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(output_dir))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                logger.warning("tensorboard is not installed: writing metrics.jsonl only.")

    def _truncate(self, start_iter: int) -> None:
        """Drop rows with ``iteration >= start_iter`` (lines that are not JSON are kept)."""
        if not self.path.is_file():
            return
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                kept.append(line)
                continue
            if isinstance(row, dict) and isinstance(row.get("iteration"), int):
                if row["iteration"] >= start_iter:
                    dropped += 1
                    continue
            kept.append(line)
        if dropped:
            self.path.write_text("".join(line + "\n" for line in kept))
            logger.info(
                "Removed %d rows of %s from iteration %d on (they are run again).",
                dropped,
                self.path,
                start_iter,
            )

    def write(self, iteration: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = json_safe({"iteration": iteration, **metrics})
        with open(self.path, "a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, iteration)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class EMAHook(HookBase):
    """Updates a :class:`ModelEMA` after every optimisation step from ``start_iter`` on."""

    def __init__(self, ema: ModelEMA, model: nn.Module, *, start_iter: int = 0):
        self.ema = ema
        self.model = model
        self.start_iter = start_iter

    def after_step(self) -> None:
        if self.trainer.iter < self.start_iter:
            self.ema.copy_from(self.model)
        else:
            self.ema.update(self.model)


class PeriodicCheckpointer(HookBase):
    """Saves ``model_{iter:07d}`` every ``period`` iterations and ``model_final`` at the end.

    ``model_final`` is written only when the loop completed, so a run stopped by an error never
    overwrites the last good checkpoint with a broken state.
    """

    def __init__(self, checkpointer: Checkpointer, *, period: int):
        self.checkpointer = checkpointer
        self.period = period

    def after_step(self) -> None:
        it = self.trainer.iter
        if self.period > 0 and (it + 1) % self.period == 0 and it + 1 < self.trainer.max_iter:
            self.checkpointer.save(f"model_{it:07d}", iteration=it)

    def after_train(self) -> None:
        if self.trainer.completed and self.trainer.max_iter > self.trainer.start_iter:
            self.checkpointer.save("model_final", iteration=self.trainer.max_iter - 1)


class EvalHook(HookBase):
    """Runs ``evaluate()`` every ``period`` iterations and after the last one.

    Args:
        period: iterations between evaluations (0: only at the end).
        evaluate: zero-argument callable returning flat metrics (on the main process).
        writer: where the metrics are recorded.
    """

    def __init__(
        self,
        *,
        period: int,
        evaluate: Callable[[], dict[str, float]],
        writer: MetricsWriter | None = None,
    ):
        self.period = period
        self.evaluate = evaluate
        self.writer = writer
        self.latest: dict[str, float] = {}

    def _run(self) -> None:
        results = self.evaluate() or {}
        comm.synchronize()
        self.latest = results
        if results:
            summary = ", ".join(f"{k}={v:.4g}" for k, v in results.items() if _is_number(v))
            logger.info("Evaluation at iteration %d: %s", self.trainer.iter + 1, summary)
            if self.writer is not None:
                numeric = {k: float(v) for k, v in results.items() if _is_number(v)}
                self.writer.write(self.trainer.iter, {f"eval/{k}": v for k, v in numeric.items()})

    def after_step(self) -> None:
        it = self.trainer.iter + 1
        if self.period > 0 and it % self.period == 0 and it < self.trainer.max_iter:
            self._run()

    def after_train(self) -> None:
        if self.trainer.completed:
            self._run()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ProgressLogger(HookBase):
    """Every ``period`` iterations: one line with iteration, losses, lr, it/s and ETA, and the
    averaged scalars to the :class:`MetricsWriter`."""

    def __init__(self, *, period: int, writer: MetricsWriter | None = None):
        self.period = max(1, period)
        self.writer = writer
        self._window: dict[str, list[float]] = {}
        self._t0 = 0.0
        self._window_start = 0.0
        self._window_iters = 0

    def before_train(self) -> None:
        self._t0 = self._window_start = time.perf_counter()

    def after_step(self) -> None:
        for k, v in self.trainer.metrics.items():
            self._window.setdefault(k, []).append(v)
        self._window_iters += 1
        it = self.trainer.iter + 1
        if it % self.period != 0 and it != self.trainer.max_iter:
            return
        now = time.perf_counter()
        its_per_s = self._window_iters / max(now - self._window_start, 1e-9)
        averaged = {k: sum(v) / len(v) for k, v in self._window.items()}
        remaining = self.trainer.max_iter - it
        eta = datetime.timedelta(seconds=int(remaining / max(its_per_s, 1e-9)))
        losses = "  ".join(
            f"{k}: {v:.4g}"
            for k, v in averaged.items()
            if k.startswith("loss") or k == "total_loss"
        )
        if comm.is_main_process():
            logger.info(
                "iter: %d/%d  %s  lr: %.3g  %.2f it/s  eta: %s",
                it,
                self.trainer.max_iter,
                losses,
                averaged.get("lr", float("nan")),
                its_per_s,
                eta,
            )
        if self.writer is not None:
            self.writer.write(self.trainer.iter, {**averaged, "it_per_s": its_per_s})
        self._window.clear()
        self._window_iters = 0
        self._window_start = now

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if comm.is_main_process() and self.trainer.completed:
            total = datetime.timedelta(seconds=int(time.perf_counter() - self._t0))
            ran = self.trainer.max_iter - self.trainer.start_iter
            logger.info("Training ran %d iterations in %s", ran, total)
