"""Configs and builders: each shipped YAML merges, has the official recipe, builds its backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import projects  # noqa: F401  (registers the tasks and their config keys)
from diffvision.config import get_cfg
from projects.detection.build import build_backbone

CONFIGS = Path(__file__).resolve().parents[3] / "projects" / "detection"

# config -> (backbone keys without the 12 buffers and 256 head keys, NUM_CLASSES, MAX_ITER)
OFFICIAL = {
    "diffdet_r50.yaml": (281, 80, 450000),
    "diffdet_r50_300boxes.yaml": (281, 80, 450000),
    "diffdet_r101.yaml": (536, 80, 450000),
    "diffdet_swinbase.yaml": (373, 80, 450000),
    "diffdet_lvis_r50.yaml": (281, 1203, 270000),
    "diffdet_lvis_r101.yaml": (536, 1203, 270000),
    "diffdet_lvis_swinbase.yaml": (373, 1203, 270000),
}


def _cfg(name: str):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / name))
    return cfg


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_configs(name):
    num_keys, num_classes, max_iter = OFFICIAL[name]
    cfg = _cfg(name)
    d = cfg.MODEL.DiffusionDet
    assert d.NUM_PROPOSALS == (300 if "300boxes" in name else 500)
    assert d.NUM_CLASSES == num_classes and d.USE_FED_LOSS == ("lvis" in name)
    assert cfg.SOLVER.MAX_ITER == max_iter and cfg.SOLVER.BASE_LR == 2.5e-5
    assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    assert cfg.SOLVER.WARMUP_FACTOR == 0.01 and cfg.SOLVER.WARMUP_ITERS == 1000
    assert d.SNR_SCALE == 2.0 and d.SAMPLE_STEP == 1 and not d.ENSEMBLE_INCLUDE_LAST_STEP
    with torch.device("meta"):  # shapes only
        backbone = build_backbone(cfg)
    assert len(backbone.state_dict()) == num_keys


def test_toy_config_is_small():
    cfg = _cfg("diffdet_toy.yaml")
    assert cfg.DATASETS.TRAIN == ("toy_detection_train",)
    assert cfg.MODEL.DiffusionDet.NUM_CLASSES == 4 and cfg.MODEL.WEIGHTS == ""
    assert cfg.MODEL.FPN.OUT_CHANNELS == cfg.MODEL.DiffusionDet.HIDDEN_DIM


def test_unknown_backbone_is_a_value_error():
    cfg = _cfg("diffdet_r50.yaml")
    cfg.MODEL.BACKBONE.NAME = "build_vit_backbone"
    with pytest.raises(ValueError, match="build_vit_backbone"):
        build_backbone(cfg)
