"""Samplers and batching for detection training and inference (detectron2 semantics).

- :class:`TrainingSampler`: an infinite stream of shuffled indices, the same permutation on every
  rank (shared seed) and each rank taking every ``world_size``-th index.
- :class:`RepeatFactorTrainingSampler`: LVIS class-balanced repeats (Gupta et al., LVIS,
  §"repeat factor sampling"): ``r(c) = max(1, sqrt(t / f(c)))`` with ``f(c)`` the fraction of
  images containing class c, ``r(image) = max_c r(c)``, stochastically rounded every epoch.
- :class:`InferenceSampler`: contiguous shards covering every index exactly once.
- :class:`AspectRatioGroupedBatches`: batches of images that are all landscape or all portrait.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from diffvision.engine import comm

__all__ = [
    "AspectRatioGroupedBatches",
    "InferenceSampler",
    "RepeatFactorTrainingSampler",
    "TrainingSampler",
    "repeat_factors_from_category_frequency",
]


def _default_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    rank = comm.get_rank() if rank is None else rank
    world_size = comm.get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return rank, world_size


class TrainingSampler(Sampler[int]):
    """Infinite shuffled indices, sharded by rank.

    Args:
        size: dataset length.
        shuffle: shuffle every epoch (else 0..size-1 repeated).
        seed: must be the same on every rank (default ``comm.shared_random_seed()``).
        rank, world_size: default from ``diffvision.engine.comm``.
    """

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool = True,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size {size}")
        self._size = size
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank, self._world_size = _default_rank_world(rank, world_size)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)


def repeat_factors_from_category_frequency(
    dataset_dicts: Sequence[dict[str, Any]], *, repeat_thresh: float, sqrt: bool = True
) -> torch.Tensor:
    """Per-image repeat factors for LVIS-style class-balanced sampling.

    Args:
        dataset_dicts: with ``annotations[*]["category_id"]``.
        repeat_thresh: frequency threshold ``t`` (LVIS: 0.001).
        sqrt: ``r(c) = max(1, sqrt(t / f(c)))``; else ``max(1, t / f(c))``.

    Returns:
        (len(dataset_dicts),) float32 repeat factors, >= 1.
    """
    image_classes = [{a["category_id"] for a in d.get("annotations", [])} for d in dataset_dicts]
    counts: dict[int, int] = {}
    for classes in image_classes:
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
    num_images = len(dataset_dicts)
    class_rep = {}
    for c, n in counts.items():
        ratio = repeat_thresh / (n / num_images)
        class_rep[c] = max(1.0, math.sqrt(ratio) if sqrt else ratio)
    factors = [max((class_rep[c] for c in classes), default=1.0) for classes in image_classes]
    return torch.tensor(factors, dtype=torch.float32)


class RepeatFactorTrainingSampler(Sampler[int]):
    """Infinite indices where image i appears ``repeat_factors[i]`` times per epoch on average.

    Each epoch rounds every factor up with probability equal to its fractional part, repeats
    the indices and shuffles them. Sharded like :class:`TrainingSampler`.

    Args:
        repeat_factors: (N,) float factors (see :func:`repeat_factors_from_category_frequency`).
        shuffle: shuffle every epoch.
        seed, rank, world_size: as in :class:`TrainingSampler`.
    """

    def __init__(
        self,
        repeat_factors: torch.Tensor,
        *,
        shuffle: bool = True,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if len(repeat_factors) == 0:
            raise ValueError("RepeatFactorTrainingSampler needs a non-empty dataset")
        self._int_part = torch.trunc(repeat_factors)
        self._frac_part = repeat_factors - self._int_part
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank, self._world_size = _default_rank_world(rank, world_size)

    def epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        """One epoch of (unshuffled) indices with stochastically rounded repeats."""
        rands = torch.rand(len(self._frac_part), generator=generator)
        reps = self._int_part + (rands < self._frac_part).float()
        return torch.repeat_interleave(torch.arange(len(reps)), reps.long())

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self._seed)
        while True:
            indices = self.epoch_indices(g)
            if self._shuffle:
                indices = indices[torch.randperm(len(indices), generator=g)]
            yield from indices.tolist()


class InferenceSampler(Sampler[int]):
    """Each rank gets one contiguous shard; together they cover ``range(size)`` exactly once.

    Shard sizes differ by at most one (the first ``size % world_size`` ranks get one more).
    """

    def __init__(self, size: int, *, rank: int | None = None, world_size: int | None = None):
        self._size = size
        self._rank, self._world_size = _default_rank_world(rank, world_size)
        base, extra = divmod(size, self._world_size)
        shard_sizes = [base + int(r < extra) for r in range(self._world_size)]
        begin = sum(shard_sizes[: self._rank])
        self._local_indices = range(begin, begin + shard_sizes[self._rank])

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)


class AspectRatioGroupedBatches:
    """Group a stream of mapped images into batches of equal orientation.

    Two buckets (width > height, and the rest) fill independently; a bucket is emitted as a
    batch when it holds ``batch_size`` images. Orientation is read from the mapped image tensor,
    so it reflects crops.

    Args:
        stream: iterable of mapped dicts with ``"image"`` (C, H, W).
        batch_size: images per batch.
    """

    def __init__(self, stream: Iterable[dict[str, Any]], *, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.stream = stream
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        buckets: list[list[dict[str, Any]]] = [[], []]
        for d in self.stream:
            h, w = d["image"].shape[-2:]
            bucket = buckets[0 if w > h else 1]
            bucket.append(d)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()
