"""The task registry: ``MODEL.META_ARCHITECTURE`` names the builder that turns a config into a
:class:`Task` (model, training data, evaluation) for the engine.

A builder is the only code that reads the config; everything below it takes keyword arguments.
See ``docs/internals.md`` for the full contract.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from diffvision.config import CfgNode, add_config_extension
from diffvision.errors import ConfigError

__all__ = ["Task", "build_task", "get_task_builder", "register_task", "registered_tasks"]


@dataclass
class Task:
    """What a task builder hands to the engine.

    Attributes:
        model: the model, already on ``cfg.MODEL.DEVICE``. In training mode ``model(batch)``
            returns a dict of scalar, already-weighted losses that the trainer sums.
        build_train_loader: returns an infinite iterable of batches for this process (rank).
        evaluate: ``evaluate(model) -> dict[str, float]`` run on every rank with the unwrapped (or
            EMA) model in eval mode; returns flat metrics on the main process. ``None`` if the task
            has no evaluation.
    """

    model: nn.Module
    build_train_loader: Callable[[], Iterable]
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None


_TASKS: dict[str, Callable[[CfgNode], Task]] = {}


def register_task(
    name: str, *, add_config: Callable[[CfgNode], None] | None = None
) -> Callable[[Callable[[CfgNode], Task]], Callable[[CfgNode], Task]]:
    """Decorator registering ``builder(cfg) -> Task`` under ``MODEL.META_ARCHITECTURE == name``.

    Args:
        name: the meta-architecture name used in configs.
        add_config: ``add_config(cfg)`` adding the task's keys to the default config tree.
    """

    def decorator(builder: Callable[[CfgNode], Task]) -> Callable[[CfgNode], Task]:
        existing = _TASKS.get(name)
        if existing is not None and existing is not builder:
            raise ValueError(f"A task named '{name}' is already registered ({existing}).")
        _TASKS[name] = builder
        if add_config is not None:
            add_config_extension(add_config)
        return builder

    return decorator


def registered_tasks() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(_TASKS)


def get_task_builder(name: str) -> Callable[[CfgNode], Task]:
    """Return the builder for ``name``; an unknown name lists the registered ones."""
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list(_TASKS), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"Unknown MODEL.META_ARCHITECTURE '{name}'.{hint} Registered tasks: "
            f"{', '.join(registered_tasks()) or '(none: import projects first)'}."
        )
    return _TASKS[name]


def build_task(cfg: CfgNode) -> Task:
    """Build the task named by ``cfg.MODEL.META_ARCHITECTURE``."""
    return get_task_builder(cfg.MODEL.META_ARCHITECTURE)(cfg)
