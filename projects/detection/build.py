"""Config -> DiffusionDet model and task. The only model-side code that reads the config.

- :func:`build_backbone`: ``MODEL.BACKBONE.NAME`` ``build_resnet_fpn_backbone`` (ResNet-18/34/50/101
  FPN) or ``build_swintransformer_fpn_backbone`` (Swin FPN), the official names, or
  ``build_timm_fpn_backbone`` (any timm CNN + FPN, ``MODEL.TIMM.*``).
- :func:`build_model`: backbone + head + criterion -> :class:`DiffusionDet` on ``MODEL.DEVICE``.
- :func:`build_diffusiondet_task`: the task registered as ``MODEL.META_ARCHITECTURE:
  DiffusionDet`` (model with ``MODEL.WEIGHTS`` loaded, train loader, seeded evaluation).
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import torch
from torch import nn

from diffvision.config import CfgNode
from diffvision.engine import comm
from diffvision.engine.tasks import Task, register_task
from diffvision.modeling.fpn import FPN, build_resnet_fpn_backbone, build_swin_fpn_backbone
from diffvision.modeling.timm_backbone import add_timm_config, build_timm_fpn_backbone

from .checkpoint import load_weights
from .config import add_diffusiondet_config
from .detector import DiffusionDet
from .head import DynamicHead

__all__ = [
    "build_backbone",
    "build_model",
    "build_diffusiondet_task",
    "evaluate_detector",
    "image_seed",
]

logger = logging.getLogger(__name__)


def _add_config(cfg: CfgNode) -> None:
    from .data import add_detection_data_config

    add_diffusiondet_config(cfg)
    add_detection_data_config(cfg)
    add_timm_config(cfg)


def build_backbone(cfg: CfgNode) -> FPN:
    """ResNet-FPN or Swin-FPN from ``MODEL.BACKBONE``/``RESNETS``/``SWIN``/``FPN``."""
    name = cfg.MODEL.BACKBONE.NAME
    fpn_in = tuple(cfg.MODEL.FPN.IN_FEATURES)
    if cfg.MODEL.FPN.NORM != "" or cfg.MODEL.FPN.FUSE_TYPE != "sum":
        raise ValueError(
            f"only MODEL.FPN.NORM '' and FUSE_TYPE 'sum' are supported, got "
            f"{cfg.MODEL.FPN.NORM!r}, {cfg.MODEL.FPN.FUSE_TYPE!r}"
        )
    if name == "build_resnet_fpn_backbone":
        r = cfg.MODEL.RESNETS
        unsupported = {
            "NUM_GROUPS": (r.NUM_GROUPS, 1),
            "WIDTH_PER_GROUP": (r.WIDTH_PER_GROUP, 64),
            "RES5_DILATION": (r.RES5_DILATION, 1),
        }
        for key, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(f"MODEL.RESNETS.{key} = {value!r} is unsupported ({supported!r})")
        return build_resnet_fpn_backbone(
            depth=r.DEPTH,
            freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
            in_features=fpn_in,
            out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
            stride_in_1x1=r.STRIDE_IN_1X1,
            stem_channels=r.STEM_OUT_CHANNELS,
            res2_channels=r.RES2_OUT_CHANNELS,
            norm=r.NORM,
        )
    if name == "build_swintransformer_fpn_backbone":
        s = cfg.MODEL.SWIN
        return build_swin_fpn_backbone(
            size=s.SIZE,
            in_features=fpn_in,
            out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
            use_checkpoint=s.USE_CHECKPOINT,
        )
    if name == "build_timm_fpn_backbone":
        t = cfg.MODEL.TIMM
        return build_timm_fpn_backbone(
            name=t.NAME,
            pretrained=t.PRETRAINED,
            out_indices=tuple(t.OUT_INDICES),
            freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
            norm=t.NORM,
            in_features=fpn_in,
            out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        )
    raise ValueError(
        f"MODEL.BACKBONE.NAME {name!r} is not one of ['build_resnet_fpn_backbone', "
        "'build_swintransformer_fpn_backbone', 'build_timm_fpn_backbone']"
    )


def _build_criterion(cfg: CfgNode) -> nn.Module:
    from .criterion import SetCriterionDynamicK

    d = cfg.MODEL.DiffusionDet
    fed_weights = None
    if d.USE_FED_LOSS:
        from .data import build_fed_loss_cls_weights

        fed_weights = build_fed_loss_cls_weights(cfg)
    return SetCriterionDynamicK(
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
    d = cfg.MODEL.DiffusionDet
    if d.ACTIVATION != "relu":
        raise ValueError(f"MODEL.DiffusionDet.ACTIVATION {d.ACTIVATION!r} is not supported (relu)")
    if not (d.USE_FOCAL or d.USE_FED_LOSS):
        raise ValueError("MODEL.DiffusionDet needs USE_FOCAL or USE_FED_LOSS (sigmoid scores)")
    box_head = cfg.MODEL.ROI_BOX_HEAD
    if box_head.POOLER_TYPE != "ROIAlignV2":
        raise ValueError(f"ROI_BOX_HEAD.POOLER_TYPE {box_head.POOLER_TYPE!r} != 'ROIAlignV2'")
    backbone = build_backbone(cfg)
    in_features = tuple(cfg.MODEL.ROI_HEADS.IN_FEATURES)
    for f in in_features:
        if f not in backbone.out_strides:
            raise ValueError(
                f"ROI_HEADS.IN_FEATURES {f!r} is not a backbone output {backbone.out_features}"
            )
    head = DynamicHead(
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
    )
    model = DiffusionDet(
        backbone=backbone,
        head=head,
        criterion=_build_criterion(cfg) if with_criterion else None,
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
    return model.to(torch.device(cfg.MODEL.DEVICE))


def image_seed(seed: int, image_id: Any) -> int:
    """Per-image sampling seed from ``SEED`` and the image id (independent of batching/sharding)."""
    return (int(seed) * 1_000_003 + zlib.crc32(str(image_id).encode())) % (2**62)


def evaluate_detector(
    model: nn.Module,
    *,
    loader,
    evaluator,
    seed: int | None,
) -> dict[str, float]:
    """Run ``model`` over a test loader and return the evaluator's metrics.

    With ``seed`` (≥ 0) every image's boxes are drawn from a generator seeded by
    :func:`image_seed` (``seed``, ``image_id``), so the same weights give the same AP again. The
    draws do not depend on batching (only the zero padding of a batch does, slightly).
    ``seed=None`` samples like the official code.
    """
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    evaluator.reset()
    try:
        with torch.no_grad():
            for batch in loader:
                seeds = None
                if seed is not None:
                    seeds = [image_seed(seed, x.get("image_id", i)) for i, x in enumerate(batch)]
                outputs = model.inference(batch, seeds=seeds)
                evaluator.process(batch, outputs)
    finally:
        model.train(was_training)
    return evaluator.evaluate() or {}


@register_task("DiffusionDet", add_config=_add_config)
def build_diffusiondet_task(cfg: CfgNode) -> Task:
    """The DiffusionDet task: model (``MODEL.WEIGHTS`` loaded), train loader, evaluation."""
    from .data import (
        build_detection_evaluator,
        build_detection_test_loader,
        build_detection_train_loader,
    )

    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS)

    def evaluate(eval_model: nn.Module) -> dict[str, float]:
        results: dict[str, float] = {}
        names = list(cfg.DATASETS.TEST)
        for name in names:
            metrics = evaluate_detector(
                eval_model,
                loader=build_detection_test_loader(cfg, name),
                evaluator=build_detection_evaluator(cfg, name, cfg.OUTPUT_DIR),
                seed=cfg.SEED if cfg.SEED >= 0 else None,
            )
            if comm.is_main_process():
                prefix = f"{name}/" if len(names) > 1 else ""
                results.update({prefix + k: v for k, v in metrics.items()})
        return results

    return Task(
        model=model,
        build_train_loader=lambda: build_detection_train_loader(cfg),
        evaluate=evaluate if cfg.DATASETS.TEST else None,
    )
