"""Optimizer construction: per-parameter groups (backbone LR multiplier, norm/bias weight decay)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from diffvision.errors import ConfigError

__all__ = ["make_optimizer", "make_param_groups"]

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def make_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float | None = None,
    weight_decay_bias: float | None = None,
    bias_lr_factor: float = 1.0,
    backbone_multiplier: float = 1.0,
) -> list[dict]:
    """One group per distinct (lr, weight_decay) over the trainable parameters.

    Args:
        model: the (unwrapped) model; parameters with ``requires_grad=False`` are skipped.
        base_lr: learning rate of an ordinary parameter.
        weight_decay: weight decay of an ordinary parameter.
        weight_decay_norm: weight decay of normalisation-layer parameters (None: ``weight_decay``).
        weight_decay_bias: weight decay of biases (None: ``weight_decay``).
        bias_lr_factor: LR multiplier for biases.
        backbone_multiplier: LR multiplier for parameters whose name contains ``backbone``.

    Returns:
        a list of param-group dicts with ``params``, ``lr``, ``weight_decay``.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, wd = base_lr, weight_decay
            if isinstance(module, _NORM_TYPES) and weight_decay_norm is not None:
                wd = weight_decay_norm
            elif name == "bias":
                lr *= bias_lr_factor
                if weight_decay_bias is not None:
                    wd = weight_decay_bias
            if "backbone" in f"{module_name}.{name}":
                lr *= backbone_multiplier
            groups.setdefault((lr, wd), []).append(param)
    return [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]


def make_optimizer(
    param_groups: list[dict],
    *,
    name: Literal["SGD", "ADAMW", "ADAM"],
    base_lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: Sequence[float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Build SGD (momentum, nesterov), AdamW or Adam over ``param_groups``."""
    if not param_groups:
        raise ValueError("The model has no trainable parameters to optimise.")
    key = name.upper()
    if key == "SGD":
        return torch.optim.SGD(param_groups, lr=base_lr, momentum=momentum, nesterov=nesterov)
    if key == "ADAMW":
        return torch.optim.AdamW(param_groups, lr=base_lr, betas=tuple(betas))
    if key == "ADAM":
        return torch.optim.Adam(param_groups, lr=base_lr, betas=tuple(betas))
    raise ConfigError(f"Unknown SOLVER.OPTIMIZER '{name}'; expected one of SGD, ADAMW, ADAM.")
