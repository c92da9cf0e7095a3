"""Training/inference samplers and aspect-ratio grouping (detectron2 semantics)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from diffvision.data.samplers import (
    GlobalBatchLoader,
    InferenceSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
    repeat_factors_from_category_frequency,
)


def take(it, n):
    return list(itertools.islice(iter(it), n))


def test_training_sampler_is_seeded_and_sharded():
    full = take(TrainingSampler(10, seed=3, rank=0, world_size=1), 30)
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))
    assert full == take(TrainingSampler(10, seed=3, rank=0, world_size=1), 30)
    shards = [take(TrainingSampler(10, seed=3, rank=r, world_size=2), 15) for r in range(2)]
    assert shards[0] == full[0::2] and shards[1] == full[1::2]
    with pytest.raises(ValueError, match="rank"):
        TrainingSampler(10, seed=0, rank=2, world_size=2)


def test_repeat_factors_closed_form():
    # class 0 in all 4 images (f = 1), class 1 in 1 image (f = 0.25); t = 1
    dicts = [{"annotations": [{"category_id": 0}]} for _ in range(3)]
    dicts.append({"annotations": [{"category_id": 0}, {"category_id": 1}]})
    dicts.append({"annotations": []})
    factors = repeat_factors_from_category_frequency(dicts, repeat_thresh=1.0)
    # f(0) = 4/5 -> sqrt(1.25); f(1) = 1/5 -> sqrt(5); empty image -> 1
    expected = [math.sqrt(1.25)] * 3 + [math.sqrt(5.0), 1.0]
    assert factors.tolist() == pytest.approx(expected)
    lvis_like = repeat_factors_from_category_frequency(dicts, repeat_thresh=0.001)
    assert lvis_like.tolist() == [1.0] * 5


def test_repeat_factor_sampler_mean_repeats():
    # 2000 copies of three images: the mean repeat per image type is the factor
    factors = torch.tensor([1.0, 2.5, 1.2]).repeat(2000)
    sampler = RepeatFactorTrainingSampler(factors, seed=0, rank=0, world_size=1)
    indices = torch.tensor(sampler.epoch_indices(0))
    counts = torch.bincount(indices % 3, minlength=3).float() / 2000
    assert counts.tolist() == pytest.approx([1.0, 2.5, 1.2], abs=0.05)
    stream = take(RepeatFactorTrainingSampler(factors[:3], seed=0, rank=0, world_size=1), 50)
    assert set(stream) == {0, 1, 2}


@pytest.mark.parametrize("size,world", [(10, 3), (2, 4), (7, 1)])
def test_inference_sampler_covers_each_index_once(size, world):
    shards = [list(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


class _Noisy:
    """Item i: i plus an augmentation drawn from the process RNG."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return float(i) + float(torch.rand(())) / 10


def _collate(items, seeds):
    return items, seeds


def _loader(rank, world, start_iter=0, workers=0):
    return GlobalBatchLoader(
        _Noisy(),
        sampler=TrainingSampler(10, seed=5, rank=0, world_size=1),
        seed=5,
        global_batch_size=4,
        start_iter=start_iter,
        collate=_collate,
        num_workers=workers,
        rank=rank,
        world_size=world,
    )


def test_global_batches_are_a_function_of_seed_iteration_and_position():
    whole = take(_loader(0, 1), 5)
    # positions 0..19 of the sampler, in order: two whole epochs of the 10 items
    items = [int(x) for batch, _ in whole for x in batch]
    assert sorted(items[:10]) == sorted(items[10:]) == list(range(10))
    assert items == TrainingSampler(10, seed=5, rank=0, world_size=1).indices(0, 20)
    # rank r holds slice r of each global batch: same items, same augmentation, same seeds
    halves = [take(_loader(r, 2), 5) for r in (0, 1)]
    for it in range(5):
        assert halves[0][it][0] + halves[1][it][0] == whole[it][0]
        assert halves[0][it][1] + halves[1][it][1] == whole[it][1]
    # resuming at iteration 3 and data-loader workers change nothing
    assert take(_loader(0, 1, start_iter=3), 2) == whole[3:]
    assert take(_loader(0, 1, workers=2), 5) == whole
    # the augmentation depends on (seed, iteration, position): epoch 2 redraws it
    assert sorted(whole[0][0] + whole[1][0] + whole[2][0][:2]) != sorted(
        whole[2][0][2:] + whole[3][0] + whole[4][0]
    )
    assert len({s for _, seeds in whole for s in seeds}) == 20
