"""Thin helpers over ``torch.distributed`` that also work in a single, non-distributed process."""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "reduce_dict",
    "shared_random_seed",
    "synchronize",
]

_LOCAL_RANK = 0


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if _initialized() else 1


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if _initialized() else 0


def get_local_rank() -> int:
    """Rank of this process on its machine (set by the launcher)."""
    return _LOCAL_RANK


def set_local_rank(rank: int) -> None:
    global _LOCAL_RANK
    _LOCAL_RANK = rank


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes; a no-op in a single process."""
    if _initialized() and get_world_size() > 1:
        dist.barrier()


def all_gather(obj: Any) -> list[Any]:
    """Gather any picklable object from every rank; returns ``[obj_rank0, obj_rank1, ...]``."""
    world_size = get_world_size()
    if world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def reduce_dict(
    values: dict[str, torch.Tensor], *, average: bool = True
) -> dict[str, torch.Tensor]:
    """All-reduce a dict of scalar tensors (same keys on every rank); mean by default."""
    world_size = get_world_size()
    if world_size == 1 or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    dist.all_reduce(stacked)
    if average:
        stacked /= world_size
    return dict(zip(keys, stacked))


def shared_random_seed() -> int:
    """A random integer that is the same on every rank (drawn on rank 0)."""
    seed = random.randint(0, 2**31 - 1)
    return all_gather(seed)[0]
