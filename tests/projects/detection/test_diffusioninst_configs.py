"""DiffusionInst configs: the official file family merges unchanged; the shipped ones build."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import projects  # noqa: F401  (registers the tasks and their config keys)
from diffvision.config import get_cfg
from diffvision.config.ranges import check_ranges
from diffvision.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[3] / "projects" / "detection"

# The official configs/Base-DiffusionInst.yaml and diffinst.coco.res50(.inst).yaml /
# diffinst.lvis.res50.yaml settings (github.com/chenhaoxing/DiffusionInst), as a user has them.
OFFICIAL_BASE = """
MODEL:
  META_ARCHITECTURE: "DiffusionInst"
  WEIGHTS: "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  BACKBONE:
    NAME: "build_resnet_fpn_backbone"
  RESNETS:
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
  ROI_HEADS:
    IN_FEATURES: ["p2", "p3", "p4", "p5"]
  ROI_BOX_HEAD:
    POOLER_TYPE: "ROIAlignV2"
    POOLER_RESOLUTION: 7
    POOLER_SAMPLING_RATIO: 2
SOLVER:
  IMS_PER_BATCH: 2
  BASE_LR: 0.0000125
  STEPS: (210000, 250000)
  MAX_ITER: 270000
  WARMUP_FACTOR: 0.01
  WARMUP_ITERS: 1000
  WEIGHT_DECAY: 0.0001
  OPTIMIZER: "ADAMW"
  BACKBONE_MULTIPLIER: 1.0
  CLIP_GRADIENTS:
    ENABLED: True
    CLIP_TYPE: "full_model"
    CLIP_VALUE: 1.0
    NORM_TYPE: 2.0
SEED: 40244023
INPUT:
  MIN_SIZE_TRAIN: (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
  CROP:
    ENABLED: False
    TYPE: "absolute_range"
    SIZE: (384, 600)
  FORMAT: "RGB"
TEST:
  EVAL_PERIOD: 5000
DATALOADER:
  FILTER_EMPTY_ANNOTATIONS: False
  NUM_WORKERS: 4
VERSION: 2
"""
OFFICIAL = {
    "diffinst.coco.res50.yaml": """_BASE_: "Base-DiffusionInst.yaml"
MODEL:
  WEIGHTS: "/models/R-50.pkl"
  RESNETS:
    DEPTH: 50
    STRIDE_IN_1X1: False
  DiffusionInst:
    NUM_PROPOSALS: 500
    NUM_CLASSES: 80
DATASETS:
  TRAIN: ("coco_2017_train",)
  TEST:  ("coco_2017_val",)
SOLVER:
  STEPS: (350000, 420000)
  MAX_ITER: 450000
INPUT:
  CROP:
    ENABLED: True
  FORMAT: "RGB"
""",
    "diffinst.coco.res50.inst.yaml": """_BASE_: "diffinst.coco.res50.yaml"
MODEL:
  MASK_ON: True
""",
    "diffinst.lvis.res50.yaml": """_BASE_: "Base-DiffusionInst.yaml"
MODEL:
  MASK_ON: True
  RESNETS:
    DEPTH: 50
    STRIDE_IN_1X1: False
  ROI_HEADS:
    NUM_CLASSES: 1203
  DiffusionInst:
    NUM_PROPOSALS: 500
    NUM_CLASSES: 1203
    USE_FED_LOSS: True
DATASETS:
  TRAIN: ("lvis_v1_train",)
  TEST: ("lvis_v1_val",)
DATALOADER:
  SAMPLER_TRAIN: "RepeatFactorTrainingSampler"
  REPEAT_THRESHOLD: 0.001
SOLVER:
  IMS_PER_BATCH: 32
  BASE_LR: 0.00005
  STEPS: (105000, 125000)
  MAX_ITER: 135000
INPUT:
  CROP:
    ENABLED: True
  FORMAT: "RGB"
TEST:
  EVAL_PERIOD: 0
""",
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_files_merge_without_warnings(name, tmp_path, caplog):
    (tmp_path / "Base-DiffusionInst.yaml").write_text(OFFICIAL_BASE)
    for file, text in OFFICIAL.items():
        (tmp_path / file).write_text(text)
    cfg = get_cfg()
    with caplog.at_level(logging.WARNING):
        cfg.merge_from_file(str(tmp_path / name))
    check_ranges(cfg)
    assert not caplog.records, caplog.text  # MASK_ON True and ROI_HEADS.NUM_CLASSES are honoured
    d = cfg.MODEL.DiffusionInst
    assert cfg.MODEL.META_ARCHITECTURE == "DiffusionInst" and d.NUM_PROPOSALS == 500
    assert d.NUM_CLASSES == (1203 if "lvis" in name else 80)
    assert d.MASK_BRANCH_DIM == 128  # the official width
    # DiffusionDet's section keeps its own defaults (the two tasks do not share values)
    assert cfg.MODEL.DiffusionDet.NUM_PROPOSALS == 300


@pytest.mark.parametrize(
    ("name", "depth", "proposals"),
    [("diffinst_r50.yaml", 50, 500), ("diffinst_r101.yaml", 101, 500),
     ("diffinst_swinbase.yaml", None, 500), ("diffinst_lvis_r50.yaml", 50, 500),
     ("diffinst_toy.yaml", 18, 32)],
)  # fmt: skip
def test_shipped_configs(name, depth, proposals):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / name))
    check_ranges(cfg)
    assert cfg.MODEL.META_ARCHITECTURE == "DiffusionInst"
    assert cfg.MODEL.DiffusionInst.NUM_PROPOSALS == proposals
    if depth is not None:
        assert cfg.MODEL.RESNETS.DEPTH == depth
    if name != "diffinst_toy.yaml":
        assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.MODEL.DiffusionInst.MASK_BRANCH_DIM == 128


def test_mask_branch_width_must_match_the_fpn():
    from projects.detection.diffusioninst import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / "diffinst_toy.yaml"))
    cfg.MODEL.DiffusionInst.HIDDEN_DIM = 32
    with pytest.raises(ConfigError, match="HIDDEN_DIM .32. must equal MODEL.FPN.OUT_CHANNELS"):
        build_model(cfg)
    cfg.merge_from_list(
        ["MODEL.DiffusionInst.HIDDEN_DIM", "64", "MODEL.DiffusionInst.MASK_BRANCH_DIM", "0"]
    )
    with pytest.raises(ConfigError, match="MASK_BRANCH_DIM"):
        check_ranges(cfg)
