"""The one seed derivation: splitmix64 checked against its published reference output, streams
and indices that never collide, and RNG isolation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from diffvision.utils.seeding import (
    Stream,
    _splitmix64,
    capture_rng_state,
    derive_seed,
    eval_image_seed,
    isolated_rng,
    per_sample_generators,
    restore_rng_state,
    sample_seeds,
)


def test_splitmix64_matches_the_reference_sequence():
    # Vigna's splitmix64.c seeded with 0: next() returns 0xE220A8397B1DCDAF, then 0x6E789E6AA1B965F4
    assert _splitmix64(0) == 0xE220A8397B1DCDAF
    assert _splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


def test_derive_seed_depends_on_seed_stream_and_index_order():
    seeds = {
        derive_seed(1, Stream.DRAWS, 2, 3),
        derive_seed(1, Stream.DRAWS, 3, 2),
        derive_seed(2, Stream.DRAWS, 2, 3),
        derive_seed(1, Stream.AUGMENT, 2, 3),
        derive_seed(1, Stream.DRAWS, 2),
    }
    assert len(seeds) == 5
    assert derive_seed(1, Stream.DRAWS, 2, 3) == derive_seed(1, Stream.DRAWS, 2, 3)
    assert 0 <= derive_seed(2**70, Stream.STEP, -1) < 2**63
    assert sample_seeds(5, 7, range(2, 4)) == [derive_seed(5, Stream.DRAWS, 7, j) for j in (2, 3)]
    assert len(set(Stream)) == len({int(s) for s in Stream})  # every stream has its own tag


def test_eval_image_seed_depends_on_seed_and_image_id_only():
    assert eval_image_seed(0, 5) == eval_image_seed(0, np.int64(5))
    ids = {eval_image_seed(0, 5), eval_image_seed(1, 5), eval_image_seed(0, 6)}
    ids |= {eval_image_seed(0, "5a"), eval_image_seed(0, "frankfurt_000000_000294.png")}
    assert len(ids) == 5


def test_per_sample_generators_are_independent_of_the_process_rng():
    torch.manual_seed(0)
    a = [torch.rand(2, generator=g) for g in per_sample_generators(torch.tensor([3, 4]))]
    torch.manual_seed(1)
    b = [torch.rand(2, generator=g) for g in per_sample_generators([3, 4])]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("draw", [lambda: random.random(), lambda: float(np.random.rand()),
                                  lambda: float(torch.rand(()))])  # fmt: skip
def test_isolated_rng_is_a_function_of_its_seed_and_restores_the_process_stream(draw):
    state = capture_rng_state()
    expected = [draw() for _ in range(3)]
    restore_rng_state(state)
    with isolated_rng(123):
        inside = draw()
    assert [draw() for _ in range(3)] == expected
    with isolated_rng(123):
        assert draw() == inside
