"""``load_weights``: EMA weights of an engine checkpoint, and no code execution on the way."""

from __future__ import annotations

import pytest
import torch

from diffvision.engine.checkpoint import Checkpointer
from diffvision.engine.ema import ModelEMA
from diffvision.engine.weights import load_weights
from diffvision.errors import WeightsError


def _checkpoint_with_ema(folder) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # the EMA is now halfway between the two weights
    Checkpointer(model, folder, ema=ema, config_text="x: 1\n").save("model_final", iteration=1)
    return model, ema.model


def test_use_ema_loads_the_ema_entry_and_plain_load_the_model(tmp_path):
    model, ema_model = _checkpoint_with_ema(tmp_path)
    assert not torch.equal(model.weight, ema_model.weight)
    target = torch.nn.Linear(3, 2)
    load_weights(target, tmp_path / "model_final.pth", use_ema=True)
    assert torch.equal(target.weight, ema_model.weight)
    load_weights(target, tmp_path / "model_final.pth")
    assert torch.equal(target.weight, model.weight)


class _RunsCode:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


def test_use_ema_refuses_a_file_that_would_run_code(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"ema": {"weight": torch.zeros(2, 3)}, "payload": _RunsCode()}, path)
    with pytest.raises(WeightsError, match="evil.pth"):
        load_weights(torch.nn.Linear(3, 2), path, use_ema=True)
    assert "unpickling ran code" not in capsys.readouterr().out
