"""Builders that turn the ``SOLVER``/``MODEL_EMA`` config sections into engine objects."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from diffvision.config import CfgNode
from diffvision.engine.ema import ModelEMA
from diffvision.engine.lr_scheduler import make_lr_scheduler
from diffvision.engine.optim import make_optimizer, make_param_groups
from diffvision.engine.trainer import GradientClipping
from diffvision.errors import ConfigError, InputFileNotFoundError, UserInputError
from diffvision.utils import comm

__all__ = [
    "building_from_config",
    "build_amp_dtype",
    "build_batch_split",
    "build_seed",
    "build_ema",
    "build_grad_clip",
    "build_lr_scheduler",
    "build_optimizer",
]

logger = logging.getLogger(__name__)


@contextmanager
def building_from_config(what: str) -> Iterator[None]:
    """Report a library's ``ValueError`` raised while ``what`` is built from the config as a
    :class:`~diffvision.errors.ConfigError` (one ``error:`` line), and a missing file the config
    names as :class:`~diffvision.errors.InputFileNotFoundError`.

    Builders pass config values to library constructors, which check them and raise well-worded
    ``ValueError`` s (``ResNet norm 'foo' is not one of ('FrozenBN', 'BN', 'GN')``); during
    building such an error means a bad value, not a bug. ``--debug`` still shows the traceback
    (the library error is chained). Only the building is wrapped, never training or inference.
    """
    try:
        yield
    except UserInputError:
        raise
    except FileNotFoundError as exc:
        raise InputFileNotFoundError(f"{what}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{what} from the config: {exc}") from exc


_SCHEDULER_NAMES = {
    "WarmupMultiStepLR": "multistep",
    "WarmupCosineLR": "cosine",
    "WarmupPolyLR": "poly",
}


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` over per-parameter groups (backbone multiplier, norm/bias decay)."""
    s = cfg.SOLVER
    groups = make_param_groups(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        weight_decay_bias=s.WEIGHT_DECAY_BIAS,
        bias_lr_factor=s.BIAS_LR_FACTOR,
        backbone_multiplier=s.BACKBONE_MULTIPLIER,
    )
    return make_optimizer(
        groups,
        name=s.OPTIMIZER,
        base_lr=s.BASE_LR,
        momentum=s.MOMENTUM,
        nesterov=s.NESTEROV,
        betas=s.BETAS,
    )


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """``SOLVER.LR_SCHEDULER_NAME`` with warm-up, stepped once per iteration."""
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME not in _SCHEDULER_NAMES:
        raise ConfigError(
            f"Unknown SOLVER.LR_SCHEDULER_NAME '{s.LR_SCHEDULER_NAME}'; expected one of "
            f"{sorted(_SCHEDULER_NAMES)}."
        )
    steps = [x for x in s.STEPS if x <= s.MAX_ITER]
    # only the multi-step schedule reads STEPS: a cosine or poly run is not warned about them
    if len(steps) != len(s.STEPS) and s.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
        logger.warning("SOLVER.STEPS %s has milestones beyond MAX_ITER=%d", s.STEPS, s.MAX_ITER)
    return make_lr_scheduler(
        optimizer,
        schedule=_SCHEDULER_NAMES[s.LR_SCHEDULER_NAME],
        max_iter=s.MAX_ITER,
        steps=steps,
        gamma=s.GAMMA,
        end_factor=s.BASE_LR_END / s.BASE_LR if s.BASE_LR > 0 else 0.0,
        poly_power=s.POLY_LR_POWER,
        warmup_iters=s.WARMUP_ITERS,
        warmup_factor=s.WARMUP_FACTOR,
        warmup_method=s.WARMUP_METHOD,
    )


def build_grad_clip(cfg: CfgNode) -> GradientClipping | None:
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not c.ENABLED:
        return None
    return GradientClipping(clip_type=c.CLIP_TYPE, clip_value=c.CLIP_VALUE, norm_type=c.NORM_TYPE)


def build_amp_dtype(cfg: CfgNode) -> torch.dtype | None:
    """The autocast dtype of ``SOLVER.AMP`` (None when disabled)."""
    amp = cfg.SOLVER.AMP
    if not amp.ENABLED:
        return None
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    if amp.DTYPE not in dtypes:
        raise ConfigError(f"SOLVER.AMP.DTYPE must be one of {sorted(dtypes)}, got '{amp.DTYPE}'.")
    if amp.DTYPE == "float16" and not str(cfg.MODEL.DEVICE).startswith("cuda"):
        raise ConfigError("SOLVER.AMP.DTYPE float16 needs a CUDA device; use bfloat16 on CPU.")
    return dtypes[amp.DTYPE]


def build_ema(cfg: CfgNode, model: nn.Module) -> ModelEMA | None:
    e = cfg.MODEL_EMA
    if not e.ENABLED:
        return None
    return ModelEMA(model, decay=e.DECAY, device=e.DEVICE or None)


def build_batch_split(cfg: CfgNode, world_size: int | None = None) -> int:
    """Images per process: ``SOLVER.IMS_PER_BATCH`` (the global batch) over ``world_size``
    processes (default: the current world size).

    Raises:
        ConfigError: the global batch is not a positive multiple of the process count.
    """
    world_size = comm.get_world_size() if world_size is None else world_size
    total = cfg.SOLVER.IMS_PER_BATCH
    if total < 1 or total % world_size:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH ({total}) is the global batch and must be a positive multiple "
            f"of the number of processes ({world_size}); e.g. SOLVER.IMS_PER_BATCH "
            f"{max(1, -(-total // world_size)) * world_size}"
        )
    return total // world_size


def build_seed(cfg: CfgNode) -> int:
    """The run's seed: ``SEED``, or when negative one random seed shared by all ranks
    (``default_setup`` writes it back into the config, so training normally sees ``SEED >= 0``)."""
    return int(cfg.SEED) if cfg.SEED >= 0 else comm.shared_random_seed()
