"""The task registry: ``MODEL.META_ARCHITECTURE`` names the :class:`Task` whose builders turn a
config into a model, training batches, test batches and an evaluator.

Builders are the only code that reads the config; everything below them takes keyword
arguments. The engine (:mod:`diffvision.engine.run`) owns what every task shares: weight loading,
seeding, the split of ``SOLVER.IMS_PER_BATCH`` over ranks, the training loop, EMA and the
evaluation loop. See ``docs/internals.md`` for the contract in one page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from diffvision.config import CfgNode, add_config_extension
from diffvision.errors import ConfigError, did_you_mean

__all__ = [
    "DatasetEvaluator",
    "Task",
    "build_task",
    "get_task",
    "register_task",
    "registered_tasks",
]


class DatasetEvaluator(Protocol):
    """detectron2's evaluator shape: ``reset()``; ``process(inputs, outputs)`` once per batch;
    ``evaluate() -> dict`` gathers across ranks itself and returns flat metrics on the main
    process (``{}`` elsewhere)."""

    def reset(self) -> None: ...

    def process(self, inputs: Any, outputs: Any) -> None: ...

    def evaluate(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Task:
    """The four builders of one task (plus two optional hooks).

    Attributes:
        name: the ``MODEL.META_ARCHITECTURE`` value.
        build_model: ``(cfg) -> nn.Module`` on ``MODEL.DEVICE``, randomly initialised (the engine
            loads ``MODEL.WEIGHTS``). In training mode ``model(batch)`` returns a dict of scalar,
            already-weighted losses whose mean over a global batch does not depend on how it is
            split over ranks.
        build_train_loader: ``(cfg, *, start_iter) -> iterable`` of this rank's part of global
            batches ``start_iter, start_iter+1, ...`` (see
            :class:`~diffvision.data.samplers.GlobalBatchLoader`).
        build_test_loader: ``(cfg, dataset_name) -> iterable`` of this rank's test batches.
        build_evaluator: ``(cfg, dataset_name) ->`` :class:`DatasetEvaluator`.
        build_inference: optional ``(cfg) -> run(model, inputs) -> outputs`` used by the
            evaluation loop instead of ``model(inputs)`` (test-time work that is not the
            trained module's, e.g. a frozen feature extractor).
        test_dataset_names: optional ``(cfg) -> names`` evaluated (default ``DATASETS.TEST``).
        check_inputs: optional ``(cfg) -> None``: cheap checks that the config's input files
            exist (no reading), run by ``tools/train_net.py`` before any process starts; raises
            a :class:`~diffvision.errors.UserInputError` naming the file or key.
    """

    name: str
    build_model: Callable[[CfgNode], nn.Module]
    build_train_loader: Callable[..., Iterable]
    build_test_loader: Callable[[CfgNode, str], Iterable] | None = None
    build_evaluator: Callable[[CfgNode, str], DatasetEvaluator] | None = None
    build_inference: Callable[[CfgNode], Callable[[nn.Module, Any], Any]] | None = None
    test_dataset_names: Callable[[CfgNode], list[str]] | None = None
    check_inputs: Callable[[CfgNode], None] | None = None

    def evaluation_names(self, cfg: CfgNode) -> list[str]:
        """The dataset names evaluated for ``cfg`` (empty: no evaluation)."""
        if self.build_evaluator is None or self.build_test_loader is None:
            return []
        if self.test_dataset_names is not None:
            return list(self.test_dataset_names(cfg))
        return list(cfg.DATASETS.TEST)


_TASKS: dict[str, Task] = {}


def register_task(
    name: str,
    *,
    build_model: Callable[[CfgNode], nn.Module],
    build_train_loader: Callable[..., Iterable],
    build_test_loader: Callable[[CfgNode, str], Iterable] | None = None,
    build_evaluator: Callable[[CfgNode, str], DatasetEvaluator] | None = None,
    build_inference: Callable[[CfgNode], Callable[[nn.Module, Any], Any]] | None = None,
    test_dataset_names: Callable[[CfgNode], list[str]] | None = None,
    check_inputs: Callable[[CfgNode], None] | None = None,
    add_config: Callable[[CfgNode], None] | None = None,
) -> Task:
    """Register a task under ``MODEL.META_ARCHITECTURE == name`` and return it.

    Args:
        name: the meta-architecture name used in configs.
        add_config: ``add_config(cfg)`` adding the task's keys to the default config tree.
        others: see :class:`Task`.
    """
    task = Task(
        name=name,
        build_model=build_model,
        build_train_loader=build_train_loader,
        build_test_loader=build_test_loader,
        build_evaluator=build_evaluator,
        build_inference=build_inference,
        test_dataset_names=test_dataset_names,
        check_inputs=check_inputs,
    )
    existing = _TASKS.get(name)
    if existing is not None and existing.build_model is not build_model:
        raise ValueError(f"A task named '{name}' is already registered ({existing}).")
    _TASKS[name] = task
    if add_config is not None:
        add_config_extension(add_config)
    return task


def registered_tasks() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The task registered as ``name``; an unknown name lists the registered ones."""
    if not name:
        raise ConfigError(
            "MODEL.META_ARCHITECTURE is not set: the config must name its task, one of "
            f"{', '.join(registered_tasks()) or '(none: import projects first)'}."
        )
    if name not in _TASKS:
        raise ConfigError(
            f"Unknown MODEL.META_ARCHITECTURE '{name}'.{did_you_mean(name, _TASKS)} "
            "Registered tasks: "
            f"{', '.join(registered_tasks()) or '(none: import projects first)'}."
        )
    return _TASKS[name]


def build_task(cfg: CfgNode) -> Task:
    """The task named by ``cfg.MODEL.META_ARCHITECTURE``."""
    return get_task(cfg.MODEL.META_ARCHITECTURE)
