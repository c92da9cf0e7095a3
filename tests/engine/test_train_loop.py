"""End-to-end engine behaviour on the ToyRegression task: outputs, resume, non-finite losses."""

from __future__ import annotations

import json

import pytest
import torch

from diffvision.engine.defaults import default_setup, load_config
from diffvision.engine.run import evaluate, train
from diffvision.modeling.weight_files import safe_torch_load


def _cfg(tmp_path, *overrides):
    cfg = load_config(
        "",
        [
            "MODEL.META_ARCHITECTURE", "ToyRegression",
            "MODEL.DEVICE", "cpu",
            "OUTPUT_DIR", str(tmp_path),
            "SEED", "7",
            "SOLVER.IMS_PER_BATCH", "8",
            "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.BASE_LR", "0.05",
            "SOLVER.MAX_ITER", "12",
            "SOLVER.STEPS", "(8,)",
            "SOLVER.WARMUP_ITERS", "3",
            "SOLVER.CHECKPOINT_PERIOD", "4",
            "LOG_PERIOD", "5",
            *overrides,
        ],
    )  # fmt: skip
    return default_setup(cfg)


def _weights(path):
    return safe_torch_load(path)["model"]


def test_train_writes_config_metrics_checkpoints_and_learns(tmp_path):
    results = train(_cfg(tmp_path, "SOLVER.MAX_ITER", "60", "TEST.EVAL_PERIOD", "30"))
    assert (tmp_path / "config.yaml").read_text().count("ToyRegression") == 1
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "model_0000003.pth").is_file()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss_mse"] for r in records if "loss_mse" in r]
    assert losses[-1] < 0.5 * losses[0]
    assert all({"lr", "it_per_s", "total_loss"} <= r.keys() for r in records if "loss_mse" in r)
    assert sum("eval/mse" in r for r in records) == 2  # iteration 30 and the end
    assert results["mse"] < 1.0
    ckpt = safe_torch_load(tmp_path / "model_final.pth")
    assert "ToyRegression" in ckpt["config"] and ckpt["iteration"] == 59
    assert {"optimizer", "scheduler", "rng", "model"} <= ckpt.keys()


class _Interrupt(Exception):
    pass


def test_resume_continues_exactly(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(_cfg(straight))

    killed = tmp_path / "killed"
    from diffvision.engine import trainer as trainer_mod

    original = trainer_mod.Trainer.run_step

    def dying_run_step(self):
        if self.iter == 6:  # killed during iteration 6: checkpoint of iteration 3 is the last
            raise _Interrupt
        original(self)

    monkeypatch.setattr(trainer_mod.Trainer, "run_step", dying_run_step)
    with pytest.raises(_Interrupt):
        train(_cfg(killed))
    assert not (killed / "model_final.pth").exists()
    assert (killed / "last_checkpoint").read_text() == "model_0000003.pth"
    monkeypatch.setattr(trainer_mod.Trainer, "run_step", original)

    train(_cfg(killed), resume=True)
    a, b = _weights(straight / "model_final.pth"), _weights(killed / "model_final.pth")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_nonfinite_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite at iteration 9"):
        train(_cfg(tmp_path, "TOY.NAN_AT_ITER", "9"))
    assert not (tmp_path / "model_final.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000007.pth"
    weights = _weights(tmp_path / "model_0000007.pth")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.dtype.is_floating_point)


def test_ema_weights_are_saved_and_used_for_eval_only(tmp_path):
    train(_cfg(tmp_path / "run", "MODEL_EMA.ENABLED", "True", "MODEL_EMA.DECAY", "0.5"))
    ckpt = safe_torch_load(tmp_path / "run" / "model_final.pth")
    assert "ema" in ckpt
    assert not torch.equal(ckpt["ema"]["head.weight"], ckpt["model"]["head.weight"])
    weights = str(tmp_path / "run" / "model_final.pth")
    # The engine loads MODEL.WEIGHTS, taking the EMA entry when MODEL_EMA.ENABLED.
    ema_only = evaluate(
        _cfg(tmp_path / "eval", "MODEL.WEIGHTS", weights, "MODEL_EMA.ENABLED", "True")
    )
    raw = evaluate(_cfg(tmp_path / "eval_raw", "MODEL.WEIGHTS", weights))
    from toy_task import TOY_TASK, ToyRegressor

    from diffvision.engine.run import evaluate_model

    for entry, got in (("ema", ema_only), ("model", raw)):
        reference = ToyRegressor()
        reference.load_state_dict(ckpt[entry])
        expected = evaluate_model(_cfg(tmp_path / f"ref_{entry}"), TOY_TASK, reference)
        assert got["mse"] == pytest.approx(expected["mse"], rel=1e-6)
    assert ema_only["mse"] != raw["mse"]


def test_full_model_gradient_clipping_bounds_the_update(tmp_path):
    cfg = _cfg(
        tmp_path,
        "SOLVER.OPTIMIZER", "SGD", "SOLVER.MOMENTUM", "0.0", "SOLVER.WEIGHT_DECAY", "0.0",
        "SOLVER.BASE_LR", "1.0", "SOLVER.WARMUP_ITERS", "0", "SOLVER.MAX_ITER", "1",
        "SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.01", "SOLVER.CHECKPOINT_PERIOD", "0",
    )  # fmt: skip
    torch.manual_seed(0)
    from toy_task import TOY_TASK

    before = {k: v.clone() for k, v in TOY_TASK.build_model(cfg).state_dict().items()}
    torch.manual_seed(0)
    train(cfg)
    after = _weights(tmp_path / "model_final.pth")
    step = torch.cat([(after[k] - before[k]).flatten() for k in before if k != "calls"])
    assert step.norm().item() == pytest.approx(0.01, rel=1e-4)  # lr 1 × clipped grad of norm 0.01


def test_global_batch_must_split_over_the_processes(tmp_path):
    from diffvision.engine.build import build_batch_split
    from diffvision.errors import ConfigError

    cfg = _cfg(tmp_path, "SOLVER.IMS_PER_BATCH", "6")
    assert build_batch_split(cfg, 3) == 2 and build_batch_split(cfg, 1) == 6
    with pytest.raises(
        ConfigError, match=r"IMS_PER_BATCH \(6\).*\(4\); e.g. SOLVER.IMS_PER_BATCH 8"
    ):
        build_batch_split(cfg, 4)
