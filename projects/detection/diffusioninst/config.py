"""Config keys of the DiffusionInst task.

The official ``add_diffusioninst_config`` (github.com/chenhaoxing/DiffusionInst
``diffusioninst/config.py``) is DiffusionDet's with ``MODEL.DiffusionInst`` in place of
``MODEL.DiffusionDet``: the same keys, defaults and valid ranges, here copied from the
DiffusionDet section (:mod:`projects.detection.config`) so the two never drift apart, diffvision's
additions (``NUM_TIMESTEPS``, ``DDIM_ETA``, ``BOX_RENEWAL``, ...) included. No key controls the
mask parts: their sizes, the 0.5 mask threshold and the Dice weight 5 are fixed in the official
code and here.

Compatibility key: ``MODEL.MASK_ON`` (the official ``diffinst.coco.res50.inst.yaml`` sets it; the
official code never reads it). DiffusionInst always predicts masks, DiffusionDet never does; a
value saying otherwise gets one warning.
"""

from __future__ import annotations

from diffvision.config import CfgNode, add_compat_key
from diffvision.config.ranges import ranges_under, register_ranges
from projects.detection.config import add_diffusiondet_config

__all__ = ["add_diffusioninst_config"]

add_compat_key("MODEL.MASK_ON", lambda cfg: cfg.MODEL.META_ARCHITECTURE == "DiffusionInst")
add_compat_key("MODEL.DiffusionInst.NO_OBJECT_WEIGHT", 0.1)


def add_diffusioninst_config(cfg: CfgNode) -> None:
    """Add ``MODEL.DiffusionInst`` (DiffusionDet's keys and defaults) and ``MODEL.MASK_ON``."""
    if "DiffusionDet" not in cfg.MODEL:
        add_diffusiondet_config(cfg)
    if "DiffusionInst" not in cfg.MODEL:
        # DiffusionDet's defaults, not the values of cfg's (possibly already merged) section
        fresh = CfgNode({"MODEL": CfgNode()})
        add_diffusiondet_config(fresh)
        cfg.MODEL.DiffusionInst = fresh.MODEL.DiffusionDet
    if "MASK_ON" not in cfg.MODEL:
        cfg.MODEL.MASK_ON = False  # detectron2's default


register_ranges(ranges_under("MODEL.DiffusionDet."), prefix="MODEL.DiffusionInst.")
