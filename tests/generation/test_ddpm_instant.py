"""Instant end-to-end run of the DDPM task through the engine, then checkpoint loading and
``tools/sample.py`` on its output (CPU, seconds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

import diffvision.generation  # noqa: F401  (registers the task)
from diffvision.config import get_cfg
from diffvision.data.toy_shapes import ensure_toy_shapes
from diffvision.engine.run import train
from diffvision.generation.checkpoint import load_ddpm_unet
from diffvision.modeling.weight_files import safe_torch_load

ROOT = Path(__file__).resolve().parents[2]


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_evaluate_load_and_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    ensure_toy_shapes(num_per_class=4)  # small stand-in for the auto-generated set
    feature_net = tmp_path / "features.pt"  # substitute for the Inception network
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    torch.jit.script(net).save(str(feature_net))
    out = tmp_path / "run"
    cfg = get_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "ddpm" / "toy_instant.yaml"))
    cfg.merge_from_list([
        "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "4",
        "TEST.EVAL_PERIOD", "2", "INPUT.IMAGE_SIZE", "8",
        "MODEL.DDPM.UNET.CHANNEL_MULT", "[1, 2]", "MODEL.DDPM.UNET.ATTENTION_RESOLUTIONS", "[4]",
        "MODEL.DDPM.CLASS_COND", "True", "MODEL.DDPM.CLASS_DROPOUT_PROB", "0.2",
        "MODEL.DDPM.LEARN_SIGMA", "True", "MODEL.DDPM.SAMPLER.NUM_STEPS", "2",
        "MODEL.DDPM.EVAL.NUM_GRID_SAMPLES", "4", "MODEL.DDPM.EVAL.FID_NUM_SAMPLES", "6",
        "MODEL.DDPM.EVAL.FID_NUM_REAL", "8", "MODEL.DDPM.EVAL.FID_BATCH_SIZE", "4",
        "MODEL.DDPM.EVAL.FID_FEATURE_EXTRACTOR", str(feature_net),
    ])  # fmt: skip
    metrics = train(cfg)
    assert {"ddpm/sample_mean", "ddpm/sample_std", "ddpm/fid", "ddpm/kid"} <= set(metrics)
    assert np.isfinite(metrics["ddpm/fid"]) and metrics["ddpm/fid"] >= -1e-6
    grids = sorted(p.name for p in (out / "ddpm_samples").glob("*.png"))
    assert grids == ["grid_000.png", "grid_001.png", "grid_latest.png"]  # iteration 2 and final

    ckpt = out / "model_final.pth"
    unet, schedule, run_cfg = load_ddpm_unet(ckpt)
    data = safe_torch_load(ckpt)
    for key, value in unet.state_dict().items():  # the EMA weights are the ones loaded
        torch.testing.assert_close(value, data["ema"][f"unet.{key}"])
    assert schedule.num_timesteps == 1000 and run_cfg.MODEL.DDPM.PREDICTION_TYPE == "epsilon"
    assert unet.num_classes == 3 and unet.null_class and unet.learn_sigma
    feats = unet.extract_features(torch.zeros(2, 3, 8, 8), torch.tensor([50, 150]), [1, 2])
    assert [tuple(f.shape) for f in feats] == [(2, 64, 8, 8), (2, 32, 8, 8)]

    guide = ensure_toy_shapes() / "circle" / "00000.png"
    sample = _load_tool("sample")
    cases = (["--guidance-scale", "2", "--labels", "0", "1"],
             ["--init-image", str(guide), "--strength", "0.5",
              "--ilvr-reference", str(guide), "--ilvr-factor", "2"])  # fmt: skip
    for case, extra in enumerate(cases):
        dest = tmp_path / f"samples{case}"
        args = ["--checkpoint", str(ckpt), "--output", str(dest), "--sampler", "ddpm",
                "--steps", "2", "--num-samples", "3", "--batch-size", "2", *extra]  # fmt: skip
        assert sample.main(args) == 0
        arrays = np.load(dest / "samples.npz")
        assert arrays["arr_0"].shape == (3, 8, 8, 3) and arrays["arr_0"].dtype == np.uint8
        assert (dest / "samples.png").is_file()
