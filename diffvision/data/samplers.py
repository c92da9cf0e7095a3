"""Samplers and the training loader that applies the randomness rule of
:mod:`diffvision.utils.seeding`:

- :class:`GlobalBatchLoader` builds global batch ``i`` from the sampler's positions
  ``i·B .. (i+1)·B-1``; rank r maps only its slice ``r·B/W .. (r+1)·B/W-1``. Each sample is mapped
  under :func:`~diffvision.utils.seeding.isolated_rng` seeded by the ``AUGMENT`` stream at
  ``(i, j)`` and carries the ``DRAWS`` seed at ``(i, j)`` for the model's own draws (diffusion
  timesteps, noise, padded boxes). So neither the rank, the process count nor the data-loader
  worker changes what a sample looks like, and a loader started at ``start_iter`` continues a
  killed run exactly.

Samplers:

- :class:`TrainingSampler`: an infinite stream of shuffled indices, epoch ``e`` a permutation
  seeded by ``(seed, e)``; iterating takes every ``world_size``-th index.
- :class:`RepeatFactorTrainingSampler`: LVIS class-balanced repeats (Gupta et al., LVIS,
  §"repeat factor sampling"): ``r(c) = max(1, sqrt(t / f(c)))`` with ``f(c)`` the fraction of
  images containing class c, ``r(image) = max_c r(c)``, stochastically rounded every epoch.
- :class:`InferenceSampler`: contiguous shards covering every index exactly once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler, get_worker_info

from diffvision.utils import comm
from diffvision.utils.seeding import (
    Stream,
    derive_seed,
    isolated_rng,
    sample_seeds,
    seeded_generator,
)

__all__ = [
    "GlobalBatchLoader",
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
    """Infinite shuffled indices: epoch ``e`` is ``randperm(size)`` seeded by ``(seed, e)``.

    The index at global position ``p`` (``p = iteration * global_batch + j``) is therefore a pure
    function of ``(seed, p)``: :meth:`indices` gives any range without replaying the stream.
    Iterating yields this rank's share (every ``world_size``-th position, detectron2's layout);
    :class:`GlobalBatchLoader` instead gives each rank a contiguous slice of every global batch.

    Args:
        size: dataset length.
        shuffle: shuffle every epoch (else 0..size-1 repeated).
        seed: must be the same on every rank (default ``comm.shared_random_seed()``).
        rank, world_size: default from ``diffvision.utils.comm``.
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
        self._epochs: dict[int, list[int]] = {}

    def epoch_indices(self, epoch: int) -> list[int]:
        """The ``size`` indices of one epoch (a permutation when shuffling)."""
        if epoch not in self._epochs:
            if len(self._epochs) > 4:
                self._epochs.clear()
            if self._shuffle:
                g = seeded_generator(derive_seed(self._seed, Stream.SHUFFLE, epoch))
                self._epochs[epoch] = torch.randperm(self._size, generator=g).tolist()
            else:
                self._epochs[epoch] = list(range(self._size))
        return self._epochs[epoch]

    def indices(self, start: int, stop: int) -> list[int]:
        """Dataset indices at global positions ``start .. stop-1``."""
        return [self.epoch_indices(p // self._size)[p % self._size] for p in range(start, stop)]

    def __iter__(self) -> Iterator[int]:
        for p in itertools.count(self._rank, self._world_size):
            yield self.indices(p, p + 1)[0]


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
        self._epochs: dict[int, list[int]] = {}
        self._starts = [0]  # first global position of each epoch computed so far

    def epoch_indices(self, epoch: int) -> list[int]:
        """One epoch of indices: repeats stochastically rounded, then shuffled, both seeded by
        ``(seed, epoch)``."""
        if epoch not in self._epochs:
            if len(self._epochs) > 4:
                self._epochs.clear()
            g = seeded_generator(derive_seed(self._seed, Stream.SHUFFLE, epoch))
            rands = torch.rand(len(self._frac_part), generator=g)
            reps = self._int_part + (rands < self._frac_part).float()
            indices = torch.repeat_interleave(torch.arange(len(reps)), reps.long())
            if self._shuffle:
                indices = indices[torch.randperm(len(indices), generator=g)]
            self._epochs[epoch] = indices.tolist()
        return self._epochs[epoch]

    def indices(self, start: int, stop: int) -> list[int]:
        """Dataset indices at global positions ``start .. stop-1`` (epochs differ in length, so
        the epoch of a position is found by walking the epoch lengths from 0)."""
        out = []
        epoch, first = self._epoch_of(start)
        p = start
        while p < stop:
            idx = self.epoch_indices(epoch)
            take = min(stop - p, first + len(idx) - p)
            out += idx[p - first : p - first + take]
            p += take
            first += len(idx)
            epoch += 1
        return out

    def _epoch_of(self, position: int) -> tuple[int, int]:
        """``(epoch, its first global position)`` of ``position``."""
        while self._starts[-1] <= position:
            self._starts.append(self._starts[-1] + len(self.epoch_indices(len(self._starts) - 1)))
        epoch = next(e for e in range(len(self._starts) - 1) if self._starts[e + 1] > position)
        return epoch, self._starts[epoch]

    def __iter__(self) -> Iterator[int]:
        for p in itertools.count(self._rank, self._world_size):
            yield self.indices(p, p + 1)[0]


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


class _GlobalBatchStream(IterableDataset):
    """This rank's slices of global batches ``start_iter, start_iter+1, ...``; data-loader worker
    w of W builds iterations ``start_iter + w, start_iter + w + W, ...`` (the DataLoader returns
    them round-robin, i.e. in order)."""

    def __init__(self, loader: GlobalBatchLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        ld = self.loader
        for it in itertools.count(ld.start_iter + worker, num_workers):
            yield ld.batch(it)


def _identity(x: Any) -> Any:
    return x


class GlobalBatchLoader:
    """Infinite loader of this rank's part of every global batch, continuing at ``start_iter``.

    Global batch ``i`` holds the samples at sampler positions ``i·B .. (i+1)·B-1`` (``B`` =
    ``global_batch_size``); rank r of W maps positions ``j`` in ``r·B/W .. (r+1)·B/W-1`` of it.
    Sample j is produced by ``dataset[index]`` inside
    :func:`~diffvision.utils.seeding.isolated_rng` seeded by the ``AUGMENT`` stream at ``(i, j)``,
    and ``collate(items, seeds)`` receives the per-sample ``DRAWS`` seeds
    (:func:`~diffvision.utils.seeding.sample_seeds`) so the model can draw its noise per sample.

    Args:
        dataset: map-style; ``dataset[index]`` may draw augmentations from the process RNG.
        sampler: an object with ``indices(start, stop) -> list[int]`` (global positions);
            default ``TrainingSampler(len(dataset), seed=seed)`` (a fresh permutation per epoch).
        seed: the run's SEED (same on every rank).
        global_batch_size: B, summed over ranks; must be divisible by ``world_size``.
        start_iter: first global batch to produce.
        collate: ``collate(items, seeds) -> batch``.
        num_workers: data-loader worker processes (the output does not depend on it).
        rank, world_size: default from ``diffvision.utils.comm``.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        sampler: Any = None,
        seed: int,
        global_batch_size: int,
        start_iter: int = 0,
        collate: Callable[[list[Any], list[int]], Any],
        num_workers: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.rank, self.world_size = _default_rank_world(rank, world_size)
        if global_batch_size % self.world_size:
            raise ValueError(
                f"global batch {global_batch_size} is not divisible by {self.world_size} processes"
            )
        self.dataset = dataset
        self.sampler = sampler if sampler is not None else TrainingSampler(len(dataset), seed=seed)
        self.seed = int(seed)
        self.global_batch_size = global_batch_size
        self.batch_size = global_batch_size // self.world_size
        self.start_iter = start_iter
        self.collate = collate
        self.num_workers = num_workers

    def positions(self) -> range:
        """Positions j (within a global batch) that this rank maps."""
        return range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)

    def batch(self, iteration: int) -> Any:
        """This rank's slice of global batch ``iteration`` (a pure function of its arguments)."""
        positions = self.positions()
        first = iteration * self.global_batch_size
        indices = self.sampler.indices(first + positions.start, first + positions.stop)
        items = []
        for j, index in zip(positions, indices, strict=True):
            with isolated_rng(derive_seed(self.seed, Stream.AUGMENT, iteration, j)):
                items.append(self.dataset[index])
        return self.collate(items, sample_seeds(self.seed, iteration, positions))

    def __iter__(self) -> Iterator[Any]:
        if self.num_workers == 0:
            for it in itertools.count(self.start_iter):
                yield self.batch(it)
            return
        yield from DataLoader(
            _GlobalBatchStream(self),
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
        )
