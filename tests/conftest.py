"""Suite-wide isolation: a test's registered datasets do not leak into the next test."""

from __future__ import annotations

import pytest

from diffvision.data import catalog


@pytest.fixture(autouse=True)
def _isolated_dataset_registry():
    """Restore the detection dataset registry after each test (``DATASETS.CUSTOM`` entries
    register names process-wide, and a name may be registered only once per process)."""
    saved = dict(catalog._REGISTRY)
    yield
    catalog._REGISTRY.clear()
    catalog._REGISTRY.update(saved)
