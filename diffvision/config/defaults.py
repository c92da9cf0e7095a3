"""The default config tree of the engine: detectron2's key names where they exist, each key with
its default and (when numeric) its valid range.

Task sections (``MODEL.DiffusionDet``, ``MODEL.DDPM``, ``TEST.AUG``, ...) are added by each task's
``config.py``, the backbone sections (``MODEL.BACKBONE``, ``RESNETS``, ``FPN``, ...) by the
backbone registry's :func:`~diffvision.modeling.backbones.add_backbone_config`;
:func:`get_cfg` applies them all. Every key here is read by some builder
(``tests/config/test_unread_keys.py`` checks it). The few keys kept only so official files load
are declared with :func:`~diffvision.config.add_compat_key`: setting one to a value diffvision
does not honour logs one warning naming it.
"""

from __future__ import annotations

import torch

from diffvision.config.config import CN, CfgNode, add_compat_key, apply_config_extensions
from diffvision.config.ranges import Ranged, add_keys

__all__ = ["build_default_config", "get_cfg"]

# Accepted only so official files load (all of them set it to 2); diffvision has one format.
add_compat_key("VERSION", 2)
# DiffusionDet's model_ema keys: evaluation uses the EMA weights whenever MODEL_EMA.ENABLED, and
# the decay is constant (YOLOX's warm-up ramp is not implemented).
add_compat_key("MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY", False)
add_compat_key("MODEL_EMA.YOLOX", False)


def build_default_config() -> CN:
    """Build the default tree (a new object on every call)."""
    _C = CN()
    _C.VERSION = 2

    # ---------------------------------------------------------------- model
    add_keys(_C, "MODEL", {
        # The task (DiffusionDet, DDPM, DDeP, PixelMLP, ...): every config names it.
        "META_ARCHITECTURE": "",
        # "cuda" when a GPU is visible, else "cpu"; any torch device string is accepted.
        "DEVICE": "cuda" if torch.cuda.is_available() else "cpu",
        # Path or URL of weights to initialise from ("" = none). detectron2:// URLs are understood.
        "WEIGHTS": "",
        # RGB, 0-255 scale (detectron2's torchvision-style statistics).
        "PIXEL_MEAN": [123.675, 116.280, 103.530],
        "PIXEL_STD": Ranged([58.395, 57.120, 57.375], ">0"),
    })  # fmt: skip

    # Exponential moving average of the weights (the key names of DiffusionDet's model_ema).
    add_keys(_C, "MODEL_EMA", {
        "ENABLED": False,
        "DECAY": Ranged(0.999, "[0,1]"),
        "DEVICE": "",
        "USE_EMA_WEIGHTS_FOR_EVAL_ONLY": False,
        "YOLOX": False,
        # diffvision: first iteration from which the EMA is updated (before it, EMA = weights).
        "START_ITER": Ranged(0, ">=0"),
    })  # fmt: skip

    # ---------------------------------------------------------------- input
    add_keys(_C, "INPUT", {
        "MIN_SIZE_TRAIN": Ranged((800,), ">=1"),
        "MIN_SIZE_TRAIN_SAMPLING": "choice",
        "MAX_SIZE_TRAIN": Ranged(1333, ">=1"),
        "MIN_SIZE_TEST": Ranged(800, ">=1"),
        "MAX_SIZE_TEST": Ranged(1333, ">=1"),
        "RANDOM_FLIP": "horizontal",
        "FORMAT": "RGB",
    })  # fmt: skip
    add_keys(_C, "INPUT.CROP", {"ENABLED": False, "TYPE": "relative_range", "SIZE": [0.9, 0.9]})

    # ---------------------------------------------------------------- data
    add_keys(_C, "DATASETS", {"TRAIN": (), "TEST": ()})
    add_keys(_C, "DATALOADER", {
        "NUM_WORKERS": Ranged(4, ">=0"),
        "ASPECT_RATIO_GROUPING": True,
        "SAMPLER_TRAIN": "TrainingSampler",
        "REPEAT_THRESHOLD": Ranged(0.0, ">=0"),
        "REPEAT_SQRT": True,
        "FILTER_EMPTY_ANNOTATIONS": True,
    })  # fmt: skip

    # ---------------------------------------------------------------- solver
    add_keys(_C, "SOLVER", {
        "OPTIMIZER": "SGD",  # SGD | ADAMW | ADAM
        "LR_SCHEDULER_NAME": "WarmupMultiStepLR",  # | WarmupCosineLR | WarmupPolyLR
        "MAX_ITER": Ranged(40000, ">=0"),
        "BASE_LR": Ranged(0.001, ">0"),
        "BASE_LR_END": Ranged(0.0, ">=0"),
        "MOMENTUM": Ranged(0.9, "[0,1)"),
        "NESTEROV": False,
        "BETAS": Ranged((0.9, 0.999), "[0,1)"),  # Adam/AdamW
        "WEIGHT_DECAY": Ranged(0.0001, ">=0"),
        "WEIGHT_DECAY_NORM": Ranged(0.0, ">=0"),
        "WEIGHT_DECAY_BIAS": None,
        "BIAS_LR_FACTOR": Ranged(1.0, ">=0"),
        "BACKBONE_MULTIPLIER": Ranged(1.0, ">=0"),
        "GAMMA": Ranged(0.1, ">0"),
        "STEPS": Ranged((30000,), ">=0"),
        "POLY_LR_POWER": Ranged(0.9, ">=0"),
        "WARMUP_FACTOR": Ranged(1.0 / 1000, "[0,1]"),
        "WARMUP_ITERS": Ranged(1000, ">=0"),
        "WARMUP_METHOD": "linear",
        "CHECKPOINT_PERIOD": Ranged(5000, ">=0"),
        "IMS_PER_BATCH": Ranged(16, ">=1"),
    })  # fmt: skip
    add_keys(_C, "SOLVER.CLIP_GRADIENTS", {
        "ENABLED": False,
        "CLIP_TYPE": "value",  # value | norm | full_model
        "CLIP_VALUE": Ranged(1.0, ">0"),
        "NORM_TYPE": Ranged(2.0, ">0"),
    })  # fmt: skip
    add_keys(_C, "SOLVER.AMP", {
        "ENABLED": False,
        "DTYPE": "bfloat16",  # bfloat16 | float16 (GPU only; float16 uses a grad scaler)
    })  # fmt: skip

    # DistributedDataParallel options (diffvision).
    add_keys(_C, "DDP", {"FIND_UNUSED_PARAMETERS": False, "BROADCAST_BUFFERS": False})

    # ---------------------------------------------------------------- test
    add_keys(_C, "TEST", {"EVAL_PERIOD": Ranged(0, ">=0"), "IMS_PER_BATCH": Ranged(1, ">=1")})

    # ---------------------------------------------------------------- misc
    add_keys(_C, "", {
        "OUTPUT_DIR": "./output",
        # Negative: a random seed is drawn (and logged); otherwise runs are reproducible.
        "SEED": -1,
        "CUDNN_BENCHMARK": False,
        # Iterations between progress lines / metric records.
        "LOG_PERIOD": Ranged(20, ">=1"),
    })  # fmt: skip
    return _C


def get_cfg() -> CfgNode:
    """A fresh copy of the default config, including every registered task's keys."""
    return apply_config_extensions(build_default_config())
