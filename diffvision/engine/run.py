"""Top-level training and evaluation of any registered task from a config.

``train(cfg)`` checks the split of ``SOLVER.IMS_PER_BATCH`` over the processes, builds the task's
model, loads ``MODEL.WEIGHTS`` (the one :func:`~diffvision.engine.weights.load_weights`), builds
the optimizer, LR schedule, EMA and checkpointer, resumes, builds the task's train loader at the
resumed iteration, wraps the model in DistributedDataParallel when several processes run and
hands everything to the :class:`~diffvision.engine.trainer.Trainer`, which reseeds the process
RNGs per step. Evaluation (periodic, final, ``--eval-only``) is the shared
:func:`~diffvision.engine.evaluation.inference_on_dataset` over the task's test loaders and
evaluators, on the EMA weights when ``MODEL_EMA.ENABLED``.
"""

from __future__ import annotations

import logging

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diffvision.config import CfgNode
from diffvision.engine.build import (
    build_amp_dtype,
    build_batch_split,
    build_ema,
    build_grad_clip,
    build_lr_scheduler,
    build_optimizer,
    build_seed,
    building_from_config,
)
from diffvision.engine.checkpoint import Checkpointer
from diffvision.engine.evaluation import inference_on_dataset
from diffvision.engine.hooks import (
    EMAHook,
    EvalHook,
    MetricsWriter,
    PeriodicCheckpointer,
    ProgressLogger,
)
from diffvision.engine.tasks import Task, build_task
from diffvision.engine.trainer import Trainer
from diffvision.engine.weights import load_weights
from diffvision.errors import ConfigError
from diffvision.utils import comm

__all__ = ["evaluate", "evaluate_model", "train"]

logger = logging.getLogger(__name__)


def evaluate_model(cfg: CfgNode, task: Task, model: nn.Module) -> dict[str, float]:
    """Evaluate ``model`` on every dataset the task evaluates for ``cfg`` with the shared loop
    (:func:`~diffvision.engine.evaluation.inference_on_dataset`); metrics of several datasets are
    prefixed ``<name>/``. Runs on every rank; returns the metrics on the main process."""
    names = task.evaluation_names(cfg)
    with building_from_config("cannot build the evaluation"):
        run = task.build_inference(cfg) if task.build_inference is not None else None
    results: dict[str, float] = {}
    for name in names:
        with building_from_config(f"cannot build the evaluation of {name!r}"):
            loader = task.build_test_loader(cfg, name)
            evaluator = task.build_evaluator(cfg, name)
        metrics = inference_on_dataset(model, loader, evaluator, run=run)
        prefix = f"{name}/" if len(names) > 1 else ""
        results.update({prefix + k: v for k, v in metrics.items()})
    return results if comm.is_main_process() else {}


def train(cfg: CfgNode, *, resume: bool = False) -> dict[str, float]:
    """Train the task of ``cfg`` (resuming from ``OUTPUT_DIR`` if asked); returns the final
    evaluation metrics (empty on non-main ranks or without evaluation)."""
    task = build_task(cfg)
    build_batch_split(cfg)  # a global batch the processes cannot share fails before any work
    seed = build_seed(cfg)
    with building_from_config(f"cannot build the {cfg.MODEL.META_ARCHITECTURE} model"):
        model = task.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS)
    with building_from_config("cannot build the optimizer or LR schedule"):
        optimizer = build_optimizer(cfg, model)
        scheduler = build_lr_scheduler(cfg, optimizer)
        ema = build_ema(cfg, model)
        grad_clip = build_grad_clip(cfg)
        amp_dtype = build_amp_dtype(cfg)
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

    with building_from_config("cannot build the training data"):
        data_loader = task.build_train_loader(cfg, start_iter=start_iter)
    trainer = Trainer(
        model=train_model,
        optimizer=optimizer,
        data_loader=data_loader,
        max_iter=cfg.SOLVER.MAX_ITER,
        start_iter=start_iter,
        scheduler=scheduler,
        grad_clip=grad_clip,
        amp_dtype=amp_dtype,
        seed=seed,
    )
    writer = MetricsWriter(cfg.OUTPUT_DIR, start_iter=start_iter)
    eval_hook = None
    if task.evaluation_names(cfg):
        eval_model = ema.model if ema is not None else model
        eval_hook = EvalHook(
            period=cfg.TEST.EVAL_PERIOD,
            evaluate=lambda: evaluate_model(cfg, task, eval_model),
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
    """Evaluate ``MODEL.WEIGHTS`` (loaded strictly by :func:`load_weights`; a diffvision
    checkpoint's EMA weights when ``MODEL_EMA.ENABLED`` and it has them)."""
    task = build_task(cfg)
    if not task.evaluation_names(cfg):
        raise ConfigError(
            f"Task '{cfg.MODEL.META_ARCHITECTURE}' has nothing to evaluate: set DATASETS.TEST."
        )
    with building_from_config(f"cannot build the {cfg.MODEL.META_ARCHITECTURE} model"):
        model = task.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS, use_ema=cfg.MODEL_EMA.ENABLED)
    results = evaluate_model(cfg, task, model)
    if results and comm.is_main_process():
        MetricsWriter(cfg.OUTPUT_DIR, use_tensorboard=False).write(
            -1, {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))}
        )
    return results
