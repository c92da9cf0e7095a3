"""Config keys of the DiffusionDet task, their defaults and their valid ranges, side by side.

``MODEL.DiffusionDet`` holds the official ``add_diffusiondet_config`` keys and defaults
(``ShoufaChen/DiffusionDet``, ``diffusiondet/config.py``), so official YAML files merge unchanged.
diffvision adds:

- ``NUM_TIMESTEPS`` (1000), ``DDIM_ETA`` (1.0), ``BOX_RENEWAL`` (True), ``RENEWAL_THRESHOLD``
  (0.5), ``USE_ENSEMBLE`` (True), ``NMS_THRESH`` (0.5): constants hard-coded in the official
  ``detector.py``, exposed with the official values as defaults.
- ``ENSEMBLE_INCLUDE_LAST_STEP`` (False): the official sampler drops the last DDIM step's
  predictions from the ensemble (so S=2 equals S=1); False keeps that behaviour, True appends the
  last step like MMDetection's port.

The detectron2 sections only DiffusionDet reads are added here too with DiffusionDet's values
(``MODEL.ROI_HEADS``, ``MODEL.ROI_BOX_HEAD``, the test-time augmentation ``TEST.AUG``), and the
detection data keys detectron2's defaults lack (``DATASETS.CUSTOM``,
``INPUT.CROP.PRE_RESIZE_MIN_SIZES``). The backbone sections (``MODEL.BACKBONE``, ``RESNETS``,
``FPN``, ``SWIN``, ``TIMM``) belong to the backbone registry (:mod:`diffvision.modeling`). Keys
other tasks may add too are only added when missing, so this function never overwrites another
task's defaults.

Compatibility keys (accepted so the official files load, warned about when set to a value
diffvision ignores): ``MODEL.ROI_HEADS.NUM_CLASSES`` (the LVIS files set it beside
``MODEL.DiffusionDet.NUM_CLASSES``, the one diffvision reads), ``MODEL.RESNETS.OUT_FEATURES`` (the
ResNet-FPN always uses res2-res5), ``MODEL.SWIN.OUT_FEATURES`` (the Swin-FPN always uses all four
stages) and ``MODEL.DiffusionDet.NO_OBJECT_WEIGHT`` (unused with the focal loss, as officially).
"""

from __future__ import annotations

from diffvision.config import CfgNode, add_compat_key
from diffvision.config.ranges import Ranged, add_keys
from diffvision.modeling.backbones import add_backbone_config

__all__ = ["DETECTOR_ARCHITECTURES", "add_diffusiondet_config", "detector_section"]

#: the box-diffusion tasks; each keeps its DiffusionDet-style keys in ``MODEL.<its name>``
DETECTOR_ARCHITECTURES = ("DiffusionDet", "DiffusionInst")


def detector_section(cfg: CfgNode) -> tuple[str, CfgNode]:
    """``("MODEL.DiffusionInst", cfg.MODEL.DiffusionInst)`` for a DiffusionInst config, the
    same for any task of :data:`DETECTOR_ARCHITECTURES`, else DiffusionDet's section: where the
    tools read ``NUM_PROPOSALS``, ``SAMPLE_STEP``, ``NUM_CLASSES``, ... of the configured model."""
    arch = cfg.MODEL.META_ARCHITECTURE
    name = arch if arch in DETECTOR_ARCHITECTURES and arch in cfg.MODEL else "DiffusionDet"
    return f"MODEL.{name}", cfg.MODEL[name]


add_compat_key(  # the class count of the configured task's section (DiffusionDet, DiffusionInst)
    "MODEL.ROI_HEADS.NUM_CLASSES", lambda cfg: detector_section(cfg)[1].NUM_CLASSES
)
add_compat_key("MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"])
add_compat_key("MODEL.SWIN.OUT_FEATURES", [0, 1, 2, 3])
add_compat_key("MODEL.DiffusionDet.NO_OBJECT_WEIGHT", 0.1)


def add_diffusiondet_config(cfg: CfgNode) -> None:
    """Add every key of the DiffusionDet task to ``cfg`` (in place, idempotent)."""
    add_backbone_config(cfg)
    add_keys(cfg, "MODEL.DiffusionDet", {
        "NUM_CLASSES": Ranged(80, ">=1"),
        "NUM_PROPOSALS": Ranged(300, ">=1"),
        # RCNN head
        "NHEADS": Ranged(8, ">=1"),
        "DROPOUT": Ranged(0.0, "[0,1)"),
        "DIM_FEEDFORWARD": Ranged(2048, ">=1"),
        "ACTIVATION": "relu",
        "HIDDEN_DIM": Ranged(256, ">=1"),
        "NUM_CLS": Ranged(1, ">=0"),
        "NUM_REG": Ranged(3, ">=0"),
        "NUM_HEADS": Ranged(6, ">=1"),
        # dynamic conv: two dynamic 1x1 layers (the official head's fixed design)
        "NUM_DYNAMIC": Ranged(2, "[2,2]"),
        "DIM_DYNAMIC": Ranged(64, ">=1"),
        # loss
        "CLASS_WEIGHT": Ranged(2.0, ">=0"),
        "GIOU_WEIGHT": Ranged(2.0, ">=0"),
        "L1_WEIGHT": Ranged(5.0, ">=0"),
        "DEEP_SUPERVISION": True,
        "NO_OBJECT_WEIGHT": 0.1,
        # focal loss
        "USE_FOCAL": True,
        "USE_FED_LOSS": False,
        "ALPHA": Ranged(0.25, "[0,1]"),
        "GAMMA": Ranged(2.0, ">=0"),
        "PRIOR_PROB": Ranged(0.01, "(0,1)"),
        # dynamic k matching
        "OTA_K": Ranged(5, ">=1"),
        # diffusion
        "SNR_SCALE": Ranged(2.0, ">0"),
        "SAMPLE_STEP": Ranged(1, ">=1"),
        # inference
        "USE_NMS": True,
        # diffvision additions (official hard-coded values as defaults)
        "NUM_TIMESTEPS": Ranged(1000, ">=1"),
        "DDIM_ETA": Ranged(1.0, ">=0"),
        "BOX_RENEWAL": True,
        "RENEWAL_THRESHOLD": Ranged(0.5, "[0,1]"),
        "USE_ENSEMBLE": True,
        "ENSEMBLE_INCLUDE_LAST_STEP": False,
        "NMS_THRESH": Ranged(0.5, "[0,1]"),
        # torch.compile the head on the fast path (compile time is paid on the first call)
        "COMPILE": False,
    })  # fmt: skip
    add_keys(cfg, "MODEL.ROI_HEADS", {
        # Compatibility only: the class count is MODEL.DiffusionDet.NUM_CLASSES.
        "NUM_CLASSES": 80,
        "IN_FEATURES": ["p2", "p3", "p4", "p5"],
        # IoU threshold of the NMS that merges test-time-augmentation results.
        "NMS_THRESH_TEST": Ranged(0.5, "[0,1]"),
    })  # fmt: skip
    add_keys(cfg, "MODEL.ROI_BOX_HEAD", {
        "POOLER_TYPE": "ROIAlignV2",
        "POOLER_RESOLUTION": Ranged(7, ">=1"),
        "POOLER_SAMPLING_RATIO": Ranged(2, ">=0"),
        "FED_LOSS_FREQ_WEIGHT_POWER": 0.5,
    })  # fmt: skip
    # Number format of inference convolutions and matmuls: "fp32", "bf16" or "fp16" (fp16 is
    # refused on a CPU); boxes, scores and outputs stay float32. DiffusionDet.set_precision
    # checks the value (diffvision.modeling.precision.PRECISIONS).
    add_keys(cfg, "TEST", {"PRECISION": "fp32"})
    # Test-time augmentation (projects/detection/tta.py): every short side, each flipped.
    add_keys(cfg, "TEST.AUG", {
        "ENABLED": False,
        "MIN_SIZES": Ranged((400, 500, 600, 700, 800, 900, 1000, 1100, 1200), ">=1"),
        "MAX_SIZE": Ranged(4000, ">=1"),
        "FLIP": True,
    })  # fmt: skip
    # COCO-format datasets declared in the config, "name:json_file:image_root" each
    # (see projects/detection/data.py).
    add_keys(cfg, "DATASETS", {"CUSTOM": []})
    # Short sides of the resize before the random crop of DiffusionDet's crop branch (the
    # official hard-coded (400, 500, 600)); small-image configs lower them.
    add_keys(cfg, "INPUT.CROP", {"PRE_RESIZE_MIN_SIZES": Ranged((400, 500, 600), ">=1")})
