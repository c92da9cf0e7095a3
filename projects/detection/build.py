"""Config -> DiffusionDet model: the model builder of the DiffusionDet task.

- :func:`build_backbone`: the FPN over the registered backbone that ``MODEL.BACKBONE.NAME`` names
  (the official ``build_resnet_fpn_backbone``, ``build_swintransformer_fpn_backbone``, or
  ``build_timm_fpn_backbone`` for any timm CNN; any other registered backbone by its name, see
  :mod:`diffvision.modeling.backbones`);
- :func:`build_model`: backbone + head + criterion -> :class:`DiffusionDet` on ``MODEL.DEVICE``
  (``MODEL.RESNETS.NORM: SyncBN`` = trainable BN synchronised over processes);
- :func:`build_inference_model`: the tools' inference model with ``MODEL.WEIGHTS`` loaded;
- :func:`build_inference`: the evaluation call (with ``TEST.AUG.ENABLED``, test-time
  augmentation).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from diffvision.config import CfgNode
from diffvision.engine.sync_bn import convert_sync_batchnorm
from diffvision.engine.tasks import build_task
from diffvision.engine.weights import load_weights
from diffvision.errors import ConfigError
from diffvision.modeling.backbones import build_backbone as build_registered_backbone
from diffvision.modeling.fpn import FPN

from . import tta
from .criterion import SetCriterionDynamicK
from .data import build_fed_loss_cls_weights
from .detector import DiffusionDet
from .head import DynamicHead

__all__ = [
    "build_backbone",
    "build_detector",
    "build_inference",
    "build_inference_model",
    "build_model",
]

logger = logging.getLogger(__name__)

# The official MODEL.BACKBONE.NAME values and the registered backbone under their FPN.
_FPN_BACKBONES = {
    "build_resnet_fpn_backbone": "resnet",
    "build_swintransformer_fpn_backbone": "swin",
    "build_timm_fpn_backbone": "timm",
}


def build_backbone(cfg: CfgNode) -> FPN:
    """The FPN (``MODEL.FPN``) over the backbone named by ``MODEL.BACKBONE.NAME``."""
    if cfg.MODEL.FPN.NORM != "" or cfg.MODEL.FPN.FUSE_TYPE != "sum":
        raise ConfigError(
            f"only MODEL.FPN.NORM '' and FUSE_TYPE 'sum' are supported, got "
            f"{cfg.MODEL.FPN.NORM!r}, {cfg.MODEL.FPN.FUSE_TYPE!r}"
        )
    name = cfg.MODEL.BACKBONE.NAME
    in_features = tuple(cfg.MODEL.FPN.IN_FEATURES)
    bottom_up = build_registered_backbone(
        cfg, _FPN_BACKBONES.get(name, name), out_features=in_features
    )
    backbone = FPN(
        bottom_up=bottom_up, in_features=in_features, out_channels=cfg.MODEL.FPN.OUT_CHANNELS
    )
    sync_bn = _FPN_BACKBONES.get(name, name) == "resnet" and cfg.MODEL.RESNETS.NORM == "SyncBN"
    return convert_sync_batchnorm(backbone) if sync_bn else backbone


def _build_criterion(
    cfg: CfgNode, d: CfgNode, criterion_cls: type[SetCriterionDynamicK] = SetCriterionDynamicK
) -> nn.Module:
    fed_weights = build_fed_loss_cls_weights(cfg) if d.USE_FED_LOSS else None
    return criterion_cls(
        num_classes=d.NUM_CLASSES,
        class_weight=d.CLASS_WEIGHT,
        giou_weight=d.GIOU_WEIGHT,
        l1_weight=d.L1_WEIGHT,
        alpha=d.ALPHA,
        gamma=d.GAMMA,
        ota_k=d.OTA_K,
        deep_supervision=d.DEEP_SUPERVISION,
        use_focal=d.USE_FOCAL,
        use_fed_loss=d.USE_FED_LOSS,
        fed_loss_cls_weights=fed_weights,
        num_aux_stages=d.NUM_HEADS - 1,
    )


def build_model(cfg: CfgNode, *, with_criterion: bool = True) -> DiffusionDet:
    """Build DiffusionDet from ``cfg`` (no weights loaded; see :func:`load_weights`).

    Args:
        cfg: a config with the DiffusionDet keys (``get_cfg()`` once ``projects.detection`` is
            imported).
        with_criterion: False builds an inference-only model (no dataset needed for LVIS's
            federated-loss weights).
    """
    return build_detector(cfg, cfg.MODEL.DiffusionDet, with_criterion=with_criterion)


def build_detector(
    cfg: CfgNode,
    d: CfgNode,
    *,
    with_criterion: bool = True,
    detector_cls: type[DiffusionDet] = DiffusionDet,
    head_cls: type[DynamicHead] = DynamicHead,
    criterion_cls: type[SetCriterionDynamicK] = SetCriterionDynamicK,
    head_kwargs: dict[str, Any] | None = None,
) -> DiffusionDet:
    """:func:`build_model` with the model's key section ``d``, classes and extra head arguments
    as arguments, for the tasks built on DiffusionDet (DiffusionInst: ``MODEL.DiffusionInst``
    and its subclasses)."""
    if d.ACTIVATION != "relu":
        raise ConfigError(f"MODEL.DiffusionDet.ACTIVATION {d.ACTIVATION!r} is not supported (relu)")
    if not (d.USE_FOCAL or d.USE_FED_LOSS):
        raise ConfigError("MODEL.DiffusionDet needs USE_FOCAL or USE_FED_LOSS (sigmoid scores)")
    if d.HIDDEN_DIM % d.NHEADS:
        raise ConfigError(
            f"MODEL.DiffusionDet.HIDDEN_DIM ({d.HIDDEN_DIM}) must be divisible by NHEADS "
            f"({d.NHEADS}): each attention head gets HIDDEN_DIM / NHEADS channels"
        )
    box_head = cfg.MODEL.ROI_BOX_HEAD
    if box_head.POOLER_TYPE != "ROIAlignV2":
        raise ConfigError(f"ROI_BOX_HEAD.POOLER_TYPE {box_head.POOLER_TYPE!r} != 'ROIAlignV2'")
    backbone = build_backbone(cfg)
    in_features = tuple(cfg.MODEL.ROI_HEADS.IN_FEATURES)
    for f in in_features:
        if f not in backbone.out_strides:
            raise ValueError(
                f"ROI_HEADS.IN_FEATURES {f!r} is not a backbone output {backbone.out_features}"
            )
    head = head_cls(
        num_classes=d.NUM_CLASSES,
        num_heads=d.NUM_HEADS,
        hidden_dim=d.HIDDEN_DIM,
        deep_supervision=d.DEEP_SUPERVISION,
        prior_prob=d.PRIOR_PROB,
        pooler_scales=tuple(1.0 / backbone.out_strides[f] for f in in_features),
        pooler_resolution=box_head.POOLER_RESOLUTION,
        sampling_ratio=box_head.POOLER_SAMPLING_RATIO,
        dim_feedforward=d.DIM_FEEDFORWARD,
        nhead=d.NHEADS,
        dropout=d.DROPOUT,
        num_cls=d.NUM_CLS,
        num_reg=d.NUM_REG,
        dim_dynamic=d.DIM_DYNAMIC,
        num_dynamic=d.NUM_DYNAMIC,
        **(head_kwargs or {}),
    )
    model = detector_cls(
        backbone=backbone,
        head=head,
        criterion=_build_criterion(cfg, d, criterion_cls) if with_criterion else None,
        num_proposals=d.NUM_PROPOSALS,
        in_features=in_features,
        pixel_mean=tuple(cfg.MODEL.PIXEL_MEAN),
        pixel_std=tuple(cfg.MODEL.PIXEL_STD),
        num_timesteps=d.NUM_TIMESTEPS,
        snr_scale=d.SNR_SCALE,
        sample_step=d.SAMPLE_STEP,
        ddim_eta=d.DDIM_ETA,
        box_renewal=d.BOX_RENEWAL,
        renewal_threshold=d.RENEWAL_THRESHOLD,
        use_ensemble=d.USE_ENSEMBLE,
        ensemble_include_last_step=d.ENSEMBLE_INCLUDE_LAST_STEP,
        use_nms=d.USE_NMS,
        nms_threshold=d.NMS_THRESH,
        min_size_test=cfg.INPUT.MIN_SIZE_TEST,
        max_size_test=cfg.INPUT.MAX_SIZE_TEST,
    )
    # Present in LVIS checkpoints only; recomputed from the dataset when the model uses fed loss.
    model.weights_optional_keys = ("criterion.fed_loss_cls_weights",)
    model.head.use_compile = bool(d.COMPILE)
    return model.to(torch.device(cfg.MODEL.DEVICE)).set_precision(cfg.TEST.PRECISION)


def build_inference_model(cfg: CfgNode) -> DiffusionDet:
    """The tools' model: the configured task's inference-only model (DiffusionDet's
    :func:`build_model`, or DiffusionInst's) with ``MODEL.WEIGHTS`` loaded by the engine's
    :func:`~diffvision.engine.weights.load_weights` (a warning when it is empty), in eval mode."""
    model = build_task(cfg).build_model(cfg, with_criterion=False)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: the model keeps its random initialisation")
    return model.eval()


def build_inference(cfg: CfgNode):
    """The evaluation call: ``model(inputs)`` (each image's ``seed`` drives its draws), or with
    ``TEST.AUG.ENABLED`` the test-time augmentation of :mod:`projects.detection.tta` around the
    model, seeded by the same per-image seeds."""
    if not cfg.TEST.AUG.ENABLED:
        return None

    built: dict[str, Any] = {}  # the wrapper, built once per evaluated model (live or EMA)

    def run(model: nn.Module, inputs: list[dict]) -> list[dict]:
        detector = getattr(model, "module", model)
        if built.get("model") is not detector:
            built.update(model=detector, tta=tta.build_tta(cfg, detector))
        seeds = [x.get("seed") for x in inputs]
        return built["tta"](inputs, seeds=None if any(s is None for s in seeds) else seeds)

    return run
