"""Config -> DiffusionInst model: DiffusionDet's builder on the ``MODEL.DiffusionInst`` section
with the mask head, model and criterion classes of this package; the evaluation call."""

from __future__ import annotations

from diffvision.config import CfgNode
from diffvision.errors import ConfigError
from projects.detection.build import build_detector

from .criterion import SetCriterionWithMasks
from .head import DiffusionInstHead
from .model import DiffusionInst

__all__ = ["build_inference", "build_model"]


def build_model(cfg: CfgNode, *, with_criterion: bool = True) -> DiffusionInst:
    """Build DiffusionInst from ``cfg`` (no weights loaded).

    Raises:
        ConfigError: fewer than 3 ``ROI_HEADS.IN_FEATURES`` (the mask branch reads the first
            three) or ``HIDDEN_DIM`` other than the FPN width.
    """
    d = cfg.MODEL.DiffusionInst
    if len(cfg.MODEL.ROI_HEADS.IN_FEATURES) < 3:
        raise ConfigError(
            "DiffusionInst's mask branch reads the first 3 MODEL.ROI_HEADS.IN_FEATURES "
            f"(p2, p3, p4), got {list(cfg.MODEL.ROI_HEADS.IN_FEATURES)}"
        )
    if d.HIDDEN_DIM != cfg.MODEL.FPN.OUT_CHANNELS:
        raise ConfigError(
            f"MODEL.DiffusionInst.HIDDEN_DIM ({d.HIDDEN_DIM}) must equal MODEL.FPN.OUT_CHANNELS "
            f"({cfg.MODEL.FPN.OUT_CHANNELS}): the mask branch reads the FPN maps"
        )
    return build_detector(
        cfg,
        d,
        with_criterion=with_criterion,
        detector_cls=DiffusionInst,
        head_cls=DiffusionInstHead,
        criterion_cls=SetCriterionWithMasks,
        head_kwargs={"mask_branch_dim": d.MASK_BRANCH_DIM},
    )


def build_inference(cfg: CfgNode):
    """Plain ``model(inputs)``; test-time augmentation is refused (its merge is box-only).

    Raises:
        ConfigError: ``TEST.AUG.ENABLED`` is True.
    """
    if cfg.TEST.AUG.ENABLED:
        raise ConfigError(
            "TEST.AUG.ENABLED True: test-time augmentation merges boxes only and would drop "
            "DiffusionInst's masks; set TEST.AUG.ENABLED False"
        )
    return None
