"""The default config tree: detectron2's key names where they exist, plus diffvision's own keys.

Official DiffusionDet YAML files merge into this tree unchanged. Task-specific sections
(``MODEL.DiffusionDet``, ``MODEL.DDPM``, ...) are added by each task's ``add_*_config`` function.

Every key here is read by some builder (``tests/config/test_unread_keys.py`` checks it). The
detection-only sections (``BACKBONE``, ``RESNETS``, ``FPN``, ``ROI_HEADS``, ``ROI_BOX_HEAD``) hold
DiffusionDet's values (its ``Base-DiffusionDet.yaml``), not detectron2's. The few keys kept only so
official files load are declared with :func:`~diffvision.config.add_compat_key`: setting one to a
value diffvision does not honour logs one warning naming it.
"""

from __future__ import annotations

import torch

from diffvision.config.config import CN, add_compat_key

__all__ = ["build_default_config"]

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
    _C.MODEL = CN()
    _C.MODEL.META_ARCHITECTURE = "DiffusionDet"
    # "cuda" when a GPU is visible, else "cpu"; any torch device string is accepted.
    _C.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    # Path or URL of weights to initialise from ("" = none). detectron2:// URLs are understood.
    _C.MODEL.WEIGHTS = ""
    # Training from MODEL.WEIGHTS of another class count: the checkpoint's class names in its
    # class order, or one COCO json / detection dataset name whose categories are they. The rows
    # of classes the training set shares by name are kept (the others start fresh).
    _C.MODEL.WEIGHTS_CLASS_MAP = []
    # RGB, 0-255 scale (detectron2's torchvision-style statistics).
    _C.MODEL.PIXEL_MEAN = [123.675, 116.280, 103.530]
    _C.MODEL.PIXEL_STD = [58.395, 57.120, 57.375]

    _C.MODEL.BACKBONE = CN()
    _C.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    _C.MODEL.BACKBONE.FREEZE_AT = 2

    _C.MODEL.RESNETS = CN()
    _C.MODEL.RESNETS.DEPTH = 50
    # Compatibility only (see projects/detection/config.py): the ResNet-FPN uses res2-res5.
    _C.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    _C.MODEL.RESNETS.NUM_GROUPS = 1
    _C.MODEL.RESNETS.NORM = "FrozenBN"
    _C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
    _C.MODEL.RESNETS.STRIDE_IN_1X1 = True
    _C.MODEL.RESNETS.RES5_DILATION = 1
    _C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
    _C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64

    _C.MODEL.FPN = CN()
    _C.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    _C.MODEL.FPN.OUT_CHANNELS = 256
    _C.MODEL.FPN.NORM = ""
    _C.MODEL.FPN.FUSE_TYPE = "sum"

    _C.MODEL.ROI_HEADS = CN()
    # Compatibility only: the class count is MODEL.DiffusionDet.NUM_CLASSES (LVIS files set both).
    _C.MODEL.ROI_HEADS.NUM_CLASSES = 80
    _C.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    # IoU threshold of the NMS that merges test-time-augmentation results (as DiffusionDet's TTA).
    _C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5

    _C.MODEL.ROI_BOX_HEAD = CN()
    _C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    _C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    _C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2
    _C.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = 0.5

    _C.MODEL.SEM_SEG_HEAD = CN()
    _C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 19
    _C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255

    # Exponential moving average of the weights (the key names of DiffusionDet's model_ema).
    _C.MODEL_EMA = CN()
    _C.MODEL_EMA.ENABLED = False
    _C.MODEL_EMA.DECAY = 0.999
    _C.MODEL_EMA.DEVICE = ""
    _C.MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY = False
    _C.MODEL_EMA.YOLOX = False
    # diffvision: first iteration from which the EMA is updated (before it, EMA = weights).
    _C.MODEL_EMA.START_ITER = 0

    # ---------------------------------------------------------------- input
    _C.INPUT = CN()
    _C.INPUT.MIN_SIZE_TRAIN = (800,)
    _C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    _C.INPUT.MAX_SIZE_TRAIN = 1333
    _C.INPUT.MIN_SIZE_TEST = 800
    _C.INPUT.MAX_SIZE_TEST = 1333
    _C.INPUT.RANDOM_FLIP = "horizontal"
    _C.INPUT.FORMAT = "RGB"
    _C.INPUT.CROP = CN()
    _C.INPUT.CROP.ENABLED = False
    _C.INPUT.CROP.TYPE = "relative_range"
    _C.INPUT.CROP.SIZE = [0.9, 0.9]
    # Square training/test size for image-generation and segmentation tasks (0 = unused).
    _C.INPUT.IMAGE_SIZE = 0

    # ---------------------------------------------------------------- data
    _C.DATASETS = CN()
    _C.DATASETS.TRAIN = ()
    _C.DATASETS.TEST = ()

    _C.DATALOADER = CN()
    _C.DATALOADER.NUM_WORKERS = 4
    _C.DATALOADER.ASPECT_RATIO_GROUPING = True
    _C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
    _C.DATALOADER.REPEAT_THRESHOLD = 0.0
    _C.DATALOADER.REPEAT_SQRT = True
    _C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

    # ---------------------------------------------------------------- solver
    _C.SOLVER = CN()
    _C.SOLVER.OPTIMIZER = "SGD"  # SGD | ADAMW | ADAM
    _C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"  # | WarmupCosineLR | WarmupPolyLR
    _C.SOLVER.MAX_ITER = 40000
    _C.SOLVER.BASE_LR = 0.001
    _C.SOLVER.BASE_LR_END = 0.0
    _C.SOLVER.MOMENTUM = 0.9
    _C.SOLVER.NESTEROV = False
    _C.SOLVER.BETAS = (0.9, 0.999)  # Adam/AdamW
    _C.SOLVER.WEIGHT_DECAY = 0.0001
    _C.SOLVER.WEIGHT_DECAY_NORM = 0.0
    _C.SOLVER.WEIGHT_DECAY_BIAS = None
    _C.SOLVER.BIAS_LR_FACTOR = 1.0
    _C.SOLVER.BACKBONE_MULTIPLIER = 1.0
    _C.SOLVER.GAMMA = 0.1
    _C.SOLVER.STEPS = (30000,)
    _C.SOLVER.POLY_LR_POWER = 0.9
    _C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
    _C.SOLVER.WARMUP_ITERS = 1000
    _C.SOLVER.WARMUP_METHOD = "linear"
    _C.SOLVER.CHECKPOINT_PERIOD = 5000
    _C.SOLVER.IMS_PER_BATCH = 16
    _C.SOLVER.CLIP_GRADIENTS = CN()
    _C.SOLVER.CLIP_GRADIENTS.ENABLED = False
    _C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"  # value | norm | full_model
    _C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    _C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    _C.SOLVER.AMP = CN()
    _C.SOLVER.AMP.ENABLED = False
    _C.SOLVER.AMP.DTYPE = "bfloat16"  # bfloat16 | float16 (GPU only; float16 uses a grad scaler)

    # DistributedDataParallel options (diffvision).
    _C.DDP = CN()
    _C.DDP.FIND_UNUSED_PARAMETERS = False
    _C.DDP.BROADCAST_BUFFERS = False

    # ---------------------------------------------------------------- test
    _C.TEST = CN()
    _C.TEST.EVAL_PERIOD = 0
    _C.TEST.IMS_PER_BATCH = 1
    # Test-time augmentation of DiffusionDet (read by projects/detection/tta.py).
    _C.TEST.AUG = CN()
    _C.TEST.AUG.ENABLED = False
    _C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
    _C.TEST.AUG.MAX_SIZE = 4000
    _C.TEST.AUG.FLIP = True

    # ---------------------------------------------------------------- misc
    _C.OUTPUT_DIR = "./output"
    # Negative: a random seed is drawn (and logged); otherwise runs are reproducible.
    _C.SEED = -1
    _C.CUDNN_BENCHMARK = False
    # Iterations between progress lines / metric records.
    _C.LOG_PERIOD = 20
    return _C
