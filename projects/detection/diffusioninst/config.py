"""Config keys of the DiffusionInst task.

The official ``add_diffusioninst_config`` (github.com/chenhaoxing/DiffusionInst
``diffusioninst/config.py``) is DiffusionDet's with ``MODEL.DiffusionInst`` in place of
``MODEL.DiffusionDet``: the same keys, defaults and valid ranges, here copied from the
DiffusionDet section (:mod:`projects.detection.config`) so the two never drift apart, diffvision's
additions (``NUM_TIMESTEPS``, ``DDIM_ETA``, ``BOX_RENEWAL``, ...) included. No official key
controls the mask parts; diffvision adds one:

- ``MASK_BRANCH_DIM`` (128): the width of the mask branch's refine and tower convolutions, fixed
  at 128 in the official code. At 128 the stride-4 tower costs several times a small backbone,
  so the CPU toy config narrows it.

The 8 mask-feature channels, the dynamic head's [8, 8, 1] layout, the 0.5 mask threshold and
the Dice weight 5 are fixed, as officially.

Compatibility key: ``MODEL.MASK_ON`` (the official ``diffinst.coco.res50.inst.yaml`` sets it; the
official code never reads it). DiffusionInst always predicts masks, DiffusionDet never does; a
value saying otherwise gets one warning.
"""

from __future__ import annotations

from diffvision.config import CfgNode, add_compat_key
from diffvision.config.ranges import Ranged, add_keys, register_ranges, registered_ranges
from projects.detection.config import add_diffusiondet_config

__all__ = ["add_diffusioninst_config"]

add_compat_key("MODEL.MASK_ON", lambda cfg: cfg.MODEL.META_ARCHITECTURE == "DiffusionInst")
add_compat_key("MODEL.DiffusionInst.NO_OBJECT_WEIGHT", 0.1)

_MIRRORED = "MODEL.DiffusionDet."


def add_diffusioninst_config(cfg: CfgNode) -> None:
    """Add every key of the DiffusionInst task to ``cfg`` (in place, idempotent): DiffusionDet's
    task keys, ``MODEL.DiffusionInst`` (DiffusionDet's section's defaults and ranges, plus
    ``MASK_BRANCH_DIM``) and ``MODEL.MASK_ON``."""
    add_diffusiondet_config(cfg)
    # DiffusionDet's defaults (not the values of a cfg that may have been merged already)
    fresh = CfgNode({"MODEL": CfgNode()})
    add_diffusiondet_config(fresh)
    mirrored = {
        k[len(_MIRRORED) :]: v for k, v in registered_ranges().items() if k.startswith(_MIRRORED)
    }
    register_ranges(mirrored, prefix="MODEL.DiffusionInst.")
    add_keys(
        cfg,
        "MODEL.DiffusionInst",
        {**fresh.MODEL.DiffusionDet, "MASK_BRANCH_DIM": Ranged(128, ">=1")},
        keep_existing=True,
    )
    add_keys(cfg, "MODEL", {"MASK_ON": False}, keep_existing=True)  # detectron2's default
