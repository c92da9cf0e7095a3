"""Fixtures of the generation tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Run these small-tensor tests on one intra-op thread (restored afterwards): on a busy
    2-core machine, two spinning OpenMP threads made them 10-30× slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
