"""Weight files (modeling/weight_files.py): only plain data is unpickled; bad files are one line."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from diffvision.errors import InputFileNotFoundError, WeightsError
from diffvision.modeling.weight_files import read_state_dict
from tests.tool_helpers import DET, TINY_DET, load_tool, one_line_error

pytestmark = pytest.mark.usefixtures("tool_env")


def test_missing_weight_file_is_rejected_before_spawning(tmp_path, capsys):
    out = tmp_path / "out"
    status = load_tool("train_net").cli(
        ["--config", DET, "MODEL.WEIGHTS", str(tmp_path / "nope.pth"), "OUTPUT_DIR", str(out)]
    )
    line = one_line_error(capsys, status, "MODEL.WEIGHTS")
    assert "nope.pth" in line and "does not exist" in line
    assert not out.exists()


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weight_files_that_would_run_code_are_refused(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    evil_pth, evil_pkl = tmp_path / "evil.pth", tmp_path / "evil.pkl"
    torch.save({"model": {"w": torch.ones(1)}, "x": _RunsCode(marker)}, evil_pth)
    evil_pkl.write_bytes(pickle.dumps({"model": {"w": np.ones(1)}, "x": _RunsCode(marker)}, 2))
    with pytest.raises(WeightsError, match="evil.pth holds Python objects .*posix.system"):
        read_state_dict(evil_pth)
    with pytest.raises(WeightsError, match="evil.pkl cannot be read as plain data"):
        read_state_dict(evil_pkl)
    out = tmp_path / "out"
    status = load_tool("train_net").cli(
        ["--config", DET, "--eval-only", *TINY_DET, "MODEL.WEIGHTS", str(evil_pth),
         "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    line = one_line_error(capsys, status, "it is not loaded because unpickling them could run code")
    assert "convert it once" in line
    assert not marker.exists()


def test_plain_detectron2_pickle_still_loads(tmp_path):
    path = tmp_path / "d2.pkl"
    arrays = {"stem.conv1.weight": np.ones((2, 3), np.float32), "res2.0.x": np.arange(3)}
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "me", "k": np.float32(2)}, 2))
    state = read_state_dict(path)
    assert set(state) == set(arrays) and state["res2.0.x"].dtype == torch.int64


def test_random_bytes_as_weights_is_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02R." + bytes(range(256)) * 8)  # CI once drew such bytes by chance
    status = load_tool("train_net").cli(
        ["--config", DET, "--eval-only", *TINY_DET, "MODEL.WEIGHTS", str(junk),
         "OUTPUT_DIR", str(tmp_path / "out")]
    )  # fmt: skip
    one_line_error(capsys, status, f"weight file {junk} is not a PyTorch file")


def test_guided_diffusion_checkpoint_that_would_run_code_is_refused(tmp_path):
    """MODEL.PIXEL_MLP.GUIDED_DIFFUSION_CHECKPOINT was read by its own torch.load."""
    from diffvision.modeling.unet import load_guided_diffusion_checkpoint

    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "x": _RunsCode(marker)}, evil)
    with pytest.raises(WeightsError, match="guided-diffusion checkpoint .*evil.pt holds Python"):
        load_guided_diffusion_checkpoint(evil)
    with pytest.raises(InputFileNotFoundError, match="is a folder, expected a weight file"):
        load_guided_diffusion_checkpoint(tmp_path)
    assert not marker.exists()
