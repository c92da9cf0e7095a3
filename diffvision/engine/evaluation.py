"""The evaluation loop shared by every task (detectron2's ``inference_on_dataset`` shape)."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from diffvision.engine.tasks import DatasetEvaluator
from diffvision.utils import comm

__all__ = ["inference_on_dataset"]

logger = logging.getLogger(__name__)


def _num_batches(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def inference_on_dataset(
    model: nn.Module,
    data_loader: Iterable,
    evaluator: DatasetEvaluator,
    *,
    run: Callable[[nn.Module, Any], Any] | None = None,
    log_period_s: float = 5.0,
) -> dict[str, float]:
    """Run ``model`` over this rank's batches and return the evaluator's metrics.

    ``evaluator.reset()``, then ``evaluator.process(inputs, run(model, inputs))`` for every batch
    (``run`` defaults to ``model(inputs)``) in eval mode under ``torch.no_grad``, then
    ``evaluator.evaluate()`` (which gathers over ranks itself). Progress (batches done, seconds
    per batch, ETA) is logged every ``log_period_s`` seconds, and the total time at the end.

    Returns:
        the evaluator's flat metrics on the main process (``{}`` elsewhere).
    """
    run = run or (lambda m, inputs: m(inputs))
    total = _num_batches(data_loader)
    was_training = model.training
    model.eval()
    evaluator.reset()
    start = last_log = time.perf_counter()
    done = 0
    try:
        with torch.no_grad():
            for inputs in data_loader:
                evaluator.process(inputs, run(model, inputs))
                done += 1
                now = time.perf_counter()
                if now - last_log >= log_period_s:
                    per_batch = (now - start) / done
                    eta = "" if total is None else f", ETA {(total - done) * per_batch:.0f} s"
                    of = "" if total is None else f"/{total}"
                    logger.info("Inference %d%s batches, %.3f s/batch%s", done, of, per_batch, eta)
                    last_log = now
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    logger.info(
        "Inference of %d batches on rank %d took %s (%.4f s/batch)",
        done,
        comm.get_rank(),
        datetime.timedelta(seconds=int(elapsed)),
        elapsed / max(done, 1),
    )
    results = evaluator.evaluate() or {}
    return results if comm.is_main_process() else {}
