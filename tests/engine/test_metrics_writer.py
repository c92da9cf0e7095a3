"""``metrics.jsonl`` (engine/hooks.py): strict JSON, truncated on resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffvision.engine.hooks import MetricsWriter

pytestmark = pytest.mark.usefixtures("tool_env")


def test_metrics_jsonl_is_strict_json_and_truncated_on_resume(tmp_path):
    writer = MetricsWriter(tmp_path, use_tensorboard=False)
    for it in range(5):
        writer.write(it, {"loss": float("nan") if it == 3 else 1.0, "lr": float("inf")})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[3] == {"iteration": 3, "loss": "nan", "lr": "inf"}  # json.loads is strict enough
    MetricsWriter(tmp_path, use_tensorboard=False, start_iter=2).write(
        2, {"loss": np.float32(0.5), "ap": torch.tensor(float("nan"))}
    )
    text = (tmp_path / "metrics.jsonl").read_text()
    rows = [json.loads(r) for r in text.splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2] and rows[2] == {
        "iteration": 2,
        "loss": 0.5,
        "ap": "nan",
    }
    assert "NaN" not in text and "Infinity" not in text
