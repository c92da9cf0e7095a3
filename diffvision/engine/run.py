"""Top-level training and evaluation of any registered task from a config.

``train(cfg)`` builds the task (model, data, evaluation), then the optimizer, LR schedule, EMA,
checkpointer and hooks, wraps the model in DistributedDataParallel when several processes run,
and hands everything to the :class:`~diffvision.engine.trainer.Trainer`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diffvision.config import CfgNode
from diffvision.engine import comm
from diffvision.engine.build import (
    build_amp_dtype,
    build_ema,
    build_grad_clip,
    build_lr_scheduler,
    build_optimizer,
)
from diffvision.engine.checkpoint import Checkpointer, is_diffvision_checkpoint
from diffvision.engine.hooks import (
    EMAHook,
    EvalHook,
    MetricsWriter,
    PeriodicCheckpointer,
    ProgressLogger,
)
from diffvision.engine.tasks import build_task
from diffvision.engine.trainer import Trainer
from diffvision.errors import ConfigError
from diffvision.modeling.weight_files import safe_torch_load

__all__ = ["evaluate", "train"]

logger = logging.getLogger(__name__)


def _call_loader_builder(build: Callable[..., Iterable], start_iter: int) -> Iterable:
    """Pass ``start_iter`` to loader builders that accept it, so resumed data order continues."""
    if "start_iter" in inspect.signature(build).parameters:
        return build(start_iter=start_iter)
    if start_iter:
        logger.info("The task's loader restarts its data order on resume (no start_iter).")
    return build()


def _run_evaluation(evaluate: Callable[[nn.Module], dict], model: nn.Module) -> dict:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return evaluate(model) or {}
    finally:
        model.train(was_training)


def train(cfg: CfgNode, *, resume: bool = False) -> dict[str, float]:
    """Train the task of ``cfg`` (resuming from ``OUTPUT_DIR`` if asked); returns the final
    evaluation metrics (empty on non-main ranks or without evaluation)."""
    task = build_task(cfg)
    model = task.model
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    ema = build_ema(cfg, model)
    checkpointer = Checkpointer(
        model,
        cfg.OUTPUT_DIR,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        config_text=cfg.dump(),
        save_on_this_rank=comm.is_main_process(),
    )
    start_iter = checkpointer.resume() if resume else 0

    train_model: nn.Module = model
    if comm.get_world_size() > 1:
        on_cuda = next(model.parameters()).device.type == "cuda"
        train_model = DistributedDataParallel(
            model,
            device_ids=[comm.get_local_rank()] if on_cuda else None,
            broadcast_buffers=cfg.DDP.BROADCAST_BUFFERS,
            find_unused_parameters=cfg.DDP.FIND_UNUSED_PARAMETERS,
        )
    train_model.train()

    trainer = Trainer(
        model=train_model,
        optimizer=optimizer,
        data_loader=_call_loader_builder(task.build_train_loader, start_iter),
        max_iter=cfg.SOLVER.MAX_ITER,
        start_iter=start_iter,
        scheduler=scheduler,
        grad_clip=build_grad_clip(cfg),
        amp_dtype=build_amp_dtype(cfg),
    )
    writer = MetricsWriter(cfg.OUTPUT_DIR, start_iter=start_iter)
    eval_hook = None
    if task.evaluate is not None:
        eval_model = ema.model if ema is not None else model
        eval_hook = EvalHook(
            period=cfg.TEST.EVAL_PERIOD,
            evaluate=lambda: _run_evaluation(task.evaluate, eval_model),
            writer=writer,
        )
    trainer.register_hooks(
        [
            EMAHook(ema, model, start_iter=cfg.MODEL_EMA.START_ITER) if ema is not None else None,
            PeriodicCheckpointer(checkpointer, period=cfg.SOLVER.CHECKPOINT_PERIOD),
            eval_hook,
            ProgressLogger(period=cfg.LOG_PERIOD, writer=writer),
        ]
    )
    trainer.train()
    return eval_hook.latest if eval_hook is not None else {}


def evaluate(cfg: CfgNode) -> dict[str, float]:
    """Evaluate ``MODEL.WEIGHTS`` (loaded by the task builder). For a diffvision checkpoint that
    carries EMA weights, those are evaluated when ``MODEL_EMA.ENABLED``."""
    task = build_task(cfg)
    if task.evaluate is None:
        raise ConfigError(f"Task '{cfg.MODEL.META_ARCHITECTURE}' has no evaluation.")
    model = task.model
    if cfg.MODEL.WEIGHTS and cfg.MODEL_EMA.ENABLED:
        try:
            data = safe_torch_load(cfg.MODEL.WEIGHTS)
        except (FileNotFoundError, OSError, RuntimeError):
            data = None
        if is_diffvision_checkpoint(data) and "ema" in data:
            model.load_state_dict(data["ema"])
            logger.info("Evaluating the EMA weights of %s", cfg.MODEL.WEIGHTS)
    results = _run_evaluation(task.evaluate, model)
    if results and comm.is_main_process():
        MetricsWriter(cfg.OUTPUT_DIR, use_tensorboard=False).write(
            -1, {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))}
        )
    return results
