"""Config keys of the DiffusionDet task (``MODEL.DiffusionDet.*``, ``MODEL.SWIN.*``, ...).

The ``MODEL.DiffusionDet`` keys and defaults are the official ``add_diffusiondet_config``
(reference diffusiondet.md §4.1), so official YAML files merge unchanged. diffvision adds:

- ``NUM_TIMESTEPS`` (1000), ``DDIM_ETA`` (1.0), ``BOX_RENEWAL`` (True), ``RENEWAL_THRESHOLD``
  (0.5), ``USE_ENSEMBLE`` (True), ``NMS_THRESH`` (0.5): constants hard-coded in the official
  ``detector.py``, exposed with the official values as defaults.
- ``ENSEMBLE_INCLUDE_LAST_STEP`` (False): the official sampler drops the last DDIM step's
  predictions from the ensemble (so S=2 equals S=1, issue #56); False keeps that behaviour (the
  README numbers were made with it), True appends the last step like MMDetection's port.

The detectron2 sections DiffusionDet reads (``MODEL.BACKBONE``, ``RESNETS``, ``FPN``, ``ROI_HEADS``,
``ROI_BOX_HEAD``) live in the default tree (:mod:`diffvision.config.defaults`) with DiffusionDet's
values (``ROI_BOX_HEAD.POOLER_RESOLUTION`` 7, ``ROI_HEADS.IN_FEATURES`` p2-p5, ...). Keys that
other tasks may add too (``MODEL.SWIN``) are only added when missing, so this function never
overwrites another task's defaults.

Compatibility keys (accepted so the official files load, warned about when set to a value
diffvision ignores): ``MODEL.ROI_HEADS.NUM_CLASSES`` (the LVIS files set it beside
``MODEL.DiffusionDet.NUM_CLASSES``, the one diffvision reads), ``MODEL.RESNETS.OUT_FEATURES`` (the
ResNet-FPN always uses res2-res5), ``MODEL.SWIN.OUT_FEATURES`` (the Swin-FPN always uses all four
stages) and ``MODEL.DiffusionDet.NO_OBJECT_WEIGHT`` (unused with the focal loss, as officially).
"""

from __future__ import annotations

from diffvision.config import CN, CfgNode, add_compat_key
from diffvision.config.ranges import register_ranges

__all__ = ["add_diffusiondet_config"]

add_compat_key(  # the class count of the configured task's section (DiffusionDet, DiffusionInst)
    "MODEL.ROI_HEADS.NUM_CLASSES",
    lambda cfg: cfg.MODEL.get(cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.DiffusionDet).NUM_CLASSES,
)
add_compat_key("MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"])
add_compat_key("MODEL.SWIN.OUT_FEATURES", [0, 1, 2, 3])
add_compat_key("MODEL.DiffusionDet.NO_OBJECT_WEIGHT", 0.1)


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


register_ranges(
    {
        "NUM_CLASSES": ">=1", "NUM_PROPOSALS": ">=1", "NHEADS": ">=1", "DROPOUT": "[0,1)",
        "DIM_FEEDFORWARD": ">=1", "HIDDEN_DIM": ">=1", "NUM_CLS": ">=0", "NUM_REG": ">=0",
        "NUM_HEADS": ">=1", "NUM_DYNAMIC": ">=1", "DIM_DYNAMIC": ">=1", "CLASS_WEIGHT": ">=0",
        "GIOU_WEIGHT": ">=0", "L1_WEIGHT": ">=0", "ALPHA": "[0,1]", "GAMMA": ">=0",
        "PRIOR_PROB": "(0,1)", "OTA_K": ">=1", "SNR_SCALE": ">0", "SAMPLE_STEP": ">=1",
        "NUM_TIMESTEPS": ">=1", "DDIM_ETA": ">=0", "RENEWAL_THRESHOLD": "[0,1]",
        "NMS_THRESH": "[0,1]",
    },
    prefix="MODEL.DiffusionDet.",
)  # fmt: skip
register_ranges(
    {
        "ROI_HEADS.NMS_THRESH_TEST": "[0,1]", "ROI_BOX_HEAD.POOLER_RESOLUTION": ">=1",
        "ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": ">=0", "FPN.OUT_CHANNELS": ">=1",
    },
    prefix="MODEL.",
)  # fmt: skip
