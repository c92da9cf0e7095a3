"""The entry point reports bad user input in one line (no traceback) and a non-zero exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args, cwd):
    # Datasets resolve under cwd/datasets (empty), whatever the caller's environment says.
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DATASETS")}
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "train_net.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=240,
    )


def test_unknown_override_key_is_one_clear_line(tmp_path):
    proc = _run(
        "--config", str(REPO / "projects/detection/diffdet_toy.yaml"), "SOLVER.BASE_LRR", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "Unknown config key 'SOLVER.BASE_LRR'" in proc.stderr
    assert "Did you mean: SOLVER.BASE_LR" in proc.stderr


def test_missing_dataset_names_the_file_and_the_env_var(tmp_path):
    proc = _run(
        "--config", str(REPO / "projects/detection/diffdet_r50.yaml"), "MODEL.WEIGHTS", "",
        "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out"),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "instances_train2017.json" in proc.stderr
    assert "DIFFVISION_DATASETS" in proc.stderr
