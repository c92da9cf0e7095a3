import pytest
import torch
from torch import nn

from diffvision.engine import checkpoint as ckpt_mod
from diffvision.engine.checkpoint import Checkpointer
from diffvision.engine.ema import ModelEMA
from diffvision.modeling.weight_files import safe_torch_load


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    ck = Checkpointer(model, tmp_path)
    ck.save("model_0000009", iteration=9)
    good = safe_torch_load(tmp_path / "model_0000009.pth")

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        ck.save("model_0000009", iteration=19)
    monkeypatch.undo()
    after = safe_torch_load(tmp_path / "model_0000009.pth")
    torch.testing.assert_close(after["model"]["weight"], good["model"]["weight"])
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"


def test_resume_without_checkpoint_starts_at_zero(tmp_path):
    assert Checkpointer(nn.Linear(2, 2), tmp_path).resume() == 0


def test_resume_restores_rng_and_iteration(tmp_path):
    model = nn.Linear(2, 2)
    ck = Checkpointer(model, tmp_path)
    torch.manual_seed(5)
    ck.save("model_0000004", iteration=4)
    expected = torch.rand(3)
    torch.manual_seed(99)
    assert ck.resume() == 5
    torch.testing.assert_close(torch.rand(3), expected)


def test_ema_closed_form():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(3):
        ema.update(model)
    # e_n = 1 - 0.9^n starting from 0
    assert ema.model.weight.item() == pytest.approx(1 - 0.9**3)
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.0)
