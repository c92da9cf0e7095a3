"""Bad runs to ``--resume`` (engine/checkpoint.py): unreadable checkpoints, another config."""

from __future__ import annotations

import logging

import pytest
import torch

from diffvision.engine.checkpoint import Checkpointer
from tests.tool_helpers import DET, TINY_DET, finished_run, load_tool, one_line_error, snapshot

pytestmark = pytest.mark.usefixtures("tool_env")


def test_resume_with_no_intact_checkpoint_stops(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_0000009.pth").write_bytes(b"\x80\x02R." + bytes(range(256)))
    (out / "last_checkpoint").write_text("")
    before = snapshot(out)
    status = load_tool("train_net").cli(["--config", DET, "--resume", "OUTPUT_DIR", str(out)])
    one_line_error(capsys, status, "--resume: no intact checkpoint in")
    assert snapshot(out) == before


@pytest.mark.parametrize("marker", ["missing", "empty", "dangling", "truncated"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, marker):
    out = tmp_path / "out"
    finished_run(out)
    final = out / "model_final.pth"
    if marker == "missing":
        (out / "last_checkpoint").unlink()
        final.unlink()
    elif marker == "empty":
        (out / "last_checkpoint").write_text("")
        final.unlink()
    elif marker == "dangling":
        (out / "last_checkpoint").write_text("model_0000099.pth")
        final.unlink()
    else:  # newest checkpoint cut in half: used to fail with a bare PytorchStreamReader error
        final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])
    with caplog.at_level(logging.INFO):
        start = Checkpointer(torch.nn.Linear(2, 2), out).resume()
    assert start == 10  # model_0000009 holds iteration 9
    assert "falling back to" in caplog.text and "model_0000009.pth" in caplog.text


def test_checkpoints_get_the_mode_of_other_outputs(tmp_path):
    out = tmp_path / "out"
    finished_run(out)
    (out / "plain.txt").write_text("x")
    mode = (out / "plain.txt").stat().st_mode & 0o777
    assert (out / "model_final.pth").stat().st_mode & 0o777 == mode
    assert (out / "last_checkpoint").stat().st_mode & 0o777 == mode


def test_resume_with_another_model_or_optimizer_is_one_line(toy_det, capsys):
    """A changed HIDDEN_DIM failed in load_state_dict with a traceback; a changed optimizer
    loaded AdamW's state into SGD and failed at the first step (KeyError 'momentum'). The run's
    config.yaml, the record of how its checkpoints were made, is kept in both cases."""
    out = toy_det / "out"
    base = ["--config", DET, *TINY_DET, "SOLVER.MAX_ITER", "1", "TEST.EVAL_PERIOD", "0",
            "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)]  # fmt: skip
    assert load_tool("train_net").cli(base) == 0, capsys.readouterr().err
    capsys.readouterr()
    started_with = (out / "config.yaml").read_text()
    resume = ["--resume", *base, "SOLVER.MAX_ITER", "2"]
    status = load_tool("train_net").cli([*resume, "MODEL.DiffusionDet.HIDDEN_DIM", "32"])
    one_line_error(capsys, status, "does not fit the model this config builds")
    status = load_tool("train_net").cli([*resume, "SOLVER.OPTIMIZER", "SGD"])
    line = one_line_error(capsys, status, "the optimizer state in")
    assert "does not fit this config's SGD" in line and "momentum" in line
    assert (out / "config.yaml").read_text() == started_with
    assert load_tool("train_net").cli(resume) == 0  # the same model and optimizer resume
    assert (out / "config.yaml").read_text() == started_with
    assert "MAX_ITER: 2" in (out / "config.resume3.yaml").read_text()
