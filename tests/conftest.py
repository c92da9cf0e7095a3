"""Suite-wide isolation: a test's registered datasets do not leak into the next test, and every
test starts from the same process-global RNG state, so its outcome does not depend on which tests
ran before it (or on chance: an unseeded ``torch.randn`` input is the same on every run)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from diffvision.data import catalog


@pytest.fixture(autouse=True)
def _isolated_dataset_registry():
    """Restore the detection dataset registry after each test (``DATASETS.CUSTOM`` entries
    register names process-wide, and a name may be registered only once per process)."""
    saved = dict(catalog._REGISTRY)
    yield
    catalog._REGISTRY.clear()
    catalog._REGISTRY.update(saved)


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    """Seed Python's, NumPy's and torch's global generators before each test. diffvision itself
    never draws from them (its randomness is a function of SEED, iteration and sample); this
    fixes the inputs and initial weights tests create with plain ``torch.randn``/``nn.Linear``."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
