"""tools/train_net.py: checks before spawning, errors inside workers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.tool_helpers import DET, REPO, TINY_DET, load_tool, one_line_error

pytestmark = pytest.mark.usefixtures("tool_env")


def test_batch_not_divisible_is_rejected_before_spawning(tmp_path, capsys):
    """IMS_PER_BATCH 3 over --num-gpus 2 used to fail only after both processes started."""
    out = tmp_path / "out"
    status = load_tool("train_net").cli(
        ["--config", DET, "--num-gpus", "2", "SOLVER.IMS_PER_BATCH", "3", "OUTPUT_DIR", str(out)]
    )
    one_line_error(capsys, status, "SOLVER.IMS_PER_BATCH (3) is the global batch")
    assert not out.exists()


def test_error_inside_two_workers_is_one_line(tmp_path):
    """An input error found only inside the --num-gpus workers (here an unknown dataset name,
    raised by every rank) is printed once, exit status 2, without the launcher's traceback.
    A subprocess: the spawned workers must import tools/train_net.py as __main__."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/train_net.py"), "--config", DET, "--num-gpus", "2",
         *TINY_DET, "DATASETS.TRAIN", "('nope',)", "OUTPUT_DIR", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DIFFVISION_DATASETS": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown detection dataset 'nope'" in errors[0], proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_device_without_gpu_is_one_line(tmp_path, capsys):
    status = load_tool("train_net").cli(
        ["--config", DET, "MODEL.DEVICE", "cuda", "OUTPUT_DIR", str(tmp_path / "out")]
    )
    one_line_error(capsys, status, "no CUDA device is available; append MODEL.DEVICE cpu")


def test_eval_only_without_weights_warns_in_one_line(toy_det, capsys):
    """Demo and export said so; --eval-only evaluated a random model without a word."""
    status = load_tool("train_net").cli(
        ["--config", DET, "--eval-only", *TINY_DET, "MODEL.WEIGHTS", "",
         "OUTPUT_DIR", str(toy_det / "out")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert (
        len(warnings) == 1
        and "empty MODEL.WEIGHTS evaluates a randomly initialised" in (warnings[0])
    )
