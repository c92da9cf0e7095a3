"""Every seed diffvision uses, derived in one place.

**The randomness rule.** A random number drawn while training or evaluating is a function of the
run's ``SEED`` and of *where* it is drawn, never of a process-global stream, the rank or the
data-loader worker:

===================  =============================  ===============================================
stream               derived from                   seeds
===================  =============================  ===============================================
``SHUFFLE``          (SEED, epoch)                  the sampler's permutation of epoch e
``AUGMENT``          (SEED, iteration, position)    a sample's augmentations (:func:`isolated_rng`)
``DRAWS``            (SEED, iteration, position)    the model's draws for a sample: diffusion
                                                    timesteps and noise, padded boxes, DDeP noise
``STEP``             (SEED, iteration, rank)        the process RNGs during one training step
                                                    (dropout: draws no per-sample generator routes)
``EVAL_IMAGE``       (SEED, image id)               a test image's draws (DiffusionDet's boxes,
                                                    DDeP's evaluation noise)
``EVAL_BATCH``       (SEED, batch index)            one batch of DDPM's FID samples
``EVAL_GRID``        (SEED,)                        DDPM's sample grid
``ENSEMBLE_MEMBER``  (SEED, member)                 one pixel MLP's order of training pixels
``TRAIN_PIXELS``     (SEED,)                        which labeled pixels the pixel MLPs train on
``FEATURE_NOISE``    (NOISE_SEED,)                  the fixed noise of DDPM pixel features
===================  =============================  ===============================================

Position j is the place of a sample in the *global* batch, so a run on W processes draws what
one process draws, a killed run resumed at iteration i draws what it would have drawn, and the
data-loader worker count changes nothing.

:func:`derive_seed` is the only hash: a splitmix64 chain over ``(SEED, *indices, stream)``
(Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014), 63 bits so
that it fits ``torch.Generator.manual_seed`` and an int64 tensor, equal on every machine.
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import IntEnum

import numpy as np
import torch

__all__ = [
    "Stream",
    "capture_rng_state",
    "derive_seed",
    "eval_image_seed",
    "isolated_rng",
    "per_sample_generators",
    "random_seed",
    "restore_rng_state",
    "sample_seeds",
    "seed_process_rngs",
    "seeded_generator",
]

_MASK64 = (1 << 64) - 1


class Stream(IntEnum):
    """The named seed streams; the value is the tag mixed in last."""

    SHUFFLE = 0x5F
    AUGMENT = 0xA6
    DRAWS = 0xD7
    STEP = 0x57
    EVAL_IMAGE = 0xE1
    EVAL_BATCH = 0xEB
    EVAL_GRID = 0xE6
    ENSEMBLE_MEMBER = 0x3E
    TRAIN_PIXELS = 0x7A
    FEATURE_NOISE = 0xF7


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, stream: Stream, *indices: int) -> int:
    """The 63-bit seed of ``stream`` at ``indices`` (e.g. iteration and position) for ``seed``.

    Every integer changes the result; equal inputs give equal outputs on every machine.
    """
    h = 0
    for part in (seed, *indices, int(stream)):
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h >> 1


def sample_seeds(seed: int, iteration: int, positions: Iterable[int]) -> list[int]:
    """``DRAWS`` seeds of the samples at ``positions`` of global batch ``iteration``."""
    return [derive_seed(seed, Stream.DRAWS, iteration, j) for j in positions]


def _image_key(image_id: int | str) -> int:
    """An integer id as itself; any other id (a file name) by its CRC-32."""
    if isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool):
        return int(image_id)
    return zlib.crc32(str(image_id).encode())


def eval_image_seed(seed: int, image_id: int | str) -> int:
    """``EVAL_IMAGE`` seed of one test image: independent of batching, sharding and order."""
    return derive_seed(seed, Stream.EVAL_IMAGE, _image_key(image_id))


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (draw on CPU, then move: the numbers are
    the same on any device)."""
    return torch.Generator().manual_seed(int(seed))


def per_sample_generators(seeds: Iterable[int] | torch.Tensor) -> list[torch.Generator]:
    """One :func:`seeded_generator` per sample seed."""
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.tolist()
    return [seeded_generator(s) for s in seeds]


def random_seed() -> int:
    """A fresh 31-bit seed from the operating system (``SEED < 0``: a random run)."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def seed_process_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (every device's) process RNGs with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's CPU RNGs from ``seed`` for the block, then restore
    their previous states: code that draws from the process RNG (augmentations) becomes a pure
    function of ``seed`` without disturbing anyone else's stream."""
    state = capture_rng_state(cuda=False)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # the CPU stream only: CUDA streams untouched
    try:
        yield
    finally:
        restore_rng_state(state)


def capture_rng_state(*, cuda: bool = True) -> dict:
    """The state of Python's, NumPy's and torch's CPU (and, with ``cuda``, CUDA) generators."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if cuda and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
