"""Config keys of the DiffusionDet task (``MODEL.DiffusionDet.*``, ``MODEL.SWIN.*``, ...).

The ``MODEL.DiffusionDet`` keys and defaults are the official ``add_diffusiondet_config``
(reference diffusiondet.md §4.1), so official YAML files merge unchanged. diffvision adds:

- ``NUM_TIMESTEPS`` (1000), ``DDIM_ETA`` (1.0), ``BOX_RENEWAL`` (True), ``RENEWAL_THRESHOLD``
  (0.5), ``USE_ENSEMBLE`` (True), ``NMS_THRESH`` (0.5): constants hard-coded in the official
  ``detector.py``, exposed with the official values as defaults.
- ``ENSEMBLE_INCLUDE_LAST_STEP`` (False): the official sampler drops the last DDIM step's
  predictions from the ensemble (so S=2 equals S=1, issue #56); False keeps that behaviour (the
  README numbers were made with it), True appends the last step like MMDetection's port.

Keys that other tasks may add too (``MODEL.SWIN``, ``MODEL.BACKBONE``, ...) are only added when
missing, so this function never overwrites another task's defaults.
"""

from __future__ import annotations

from diffvision.config import CN, CfgNode

__all__ = ["add_diffusiondet_config"]


def _node(parent: CfgNode, name: str) -> CfgNode:
    if name not in parent:
        parent[name] = CN()
    return parent[name]


def _default(node: CfgNode, key: str, value) -> None:
    if key not in node:
        node[key] = value


def add_diffusiondet_config(cfg: CfgNode) -> None:
    """Add the DiffusionDet keys to ``cfg`` (in place)."""
    d = _node(cfg.MODEL, "DiffusionDet")
    defaults = {
        "NUM_CLASSES": 80,
        "NUM_PROPOSALS": 300,
        # RCNN head
        "NHEADS": 8,
        "DROPOUT": 0.0,
        "DIM_FEEDFORWARD": 2048,
        "ACTIVATION": "relu",
        "HIDDEN_DIM": 256,
        "NUM_CLS": 1,
        "NUM_REG": 3,
        "NUM_HEADS": 6,
        # dynamic conv
        "NUM_DYNAMIC": 2,
        "DIM_DYNAMIC": 64,
        # loss
        "CLASS_WEIGHT": 2.0,
        "GIOU_WEIGHT": 2.0,
        "L1_WEIGHT": 5.0,
        "DEEP_SUPERVISION": True,
        "NO_OBJECT_WEIGHT": 0.1,
        # focal loss
        "USE_FOCAL": True,
        "USE_FED_LOSS": False,
        "ALPHA": 0.25,
        "GAMMA": 2.0,
        "PRIOR_PROB": 0.01,
        # dynamic k matching
        "OTA_K": 5,
        # diffusion
        "SNR_SCALE": 2.0,
        "SAMPLE_STEP": 1,
        # inference
        "USE_NMS": True,
        # diffvision additions (official hard-coded values as defaults)
        "NUM_TIMESTEPS": 1000,
        "DDIM_ETA": 1.0,
        "BOX_RENEWAL": True,
        "RENEWAL_THRESHOLD": 0.5,
        "USE_ENSEMBLE": True,
        "ENSEMBLE_INCLUDE_LAST_STEP": False,
        "NMS_THRESH": 0.5,
        # torch.compile the head on the fast path (compile time is paid on the first call)
        "COMPILE": False,
    }
    for key, value in defaults.items():
        _default(d, key, value)

    swin = _node(cfg.MODEL, "SWIN")
    _default(swin, "SIZE", "B")  # T, S, B, B-22k
    _default(swin, "USE_CHECKPOINT", False)
    _default(swin, "OUT_FEATURES", (0, 1, 2, 3))

    backbone = _node(cfg.MODEL, "BACKBONE")
    _default(backbone, "NAME", "build_resnet_fpn_backbone")
    _default(backbone, "FREEZE_AT", 2)
    resnets = _node(cfg.MODEL, "RESNETS")
    for key, value in {
        "DEPTH": 50,
        "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
        "NORM": "FrozenBN",
        "STRIDE_IN_1X1": True,
        "NUM_GROUPS": 1,
        "WIDTH_PER_GROUP": 64,
        "RES5_DILATION": 1,
        "RES2_OUT_CHANNELS": 256,
        "STEM_OUT_CHANNELS": 64,
    }.items():
        _default(resnets, key, value)
    fpn = _node(cfg.MODEL, "FPN")
    _default(fpn, "IN_FEATURES", ["res2", "res3", "res4", "res5"])
    _default(fpn, "OUT_CHANNELS", 256)
    _default(fpn, "NORM", "")
    _default(fpn, "FUSE_TYPE", "sum")
    roi_heads = _node(cfg.MODEL, "ROI_HEADS")
    _default(roi_heads, "IN_FEATURES", ["p2", "p3", "p4", "p5"])
    _default(roi_heads, "NUM_CLASSES", 80)
    box_head = _node(cfg.MODEL, "ROI_BOX_HEAD")
    _default(box_head, "POOLER_TYPE", "ROIAlignV2")
    _default(box_head, "POOLER_RESOLUTION", 7)
    _default(box_head, "POOLER_SAMPLING_RATIO", 2)
    _default(box_head, "FED_LOSS_FREQ_WEIGHT_POWER", 0.5)
    _default(box_head, "FED_LOSS_NUM_CLASSES", 50)
