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


@pytest.fixture()
def tool_env(tmp_path, monkeypatch):
    """For tests that run the tools: datasets under ``tmp_path/datasets``, no ``--debug`` from
    the environment, and the tools' log handlers detached afterwards."""
    from tests.tool_helpers import drop_tool_log_handlers

    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.delenv("DIFFVISION_DEBUG", raising=False)
    yield
    drop_tool_log_handlers()


@pytest.fixture()
def toy_det(tmp_path):
    """``tmp_path`` holding a 4 + 2 image toy detection set under ``datasets/``."""
    from diffvision.data.toy_detection import ensure_toy_detection

    ensure_toy_detection(tmp_path / "datasets" / "toy_detection", sizes={"train": 4, "val": 2})
    return tmp_path
