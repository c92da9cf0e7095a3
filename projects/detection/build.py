"""Config -> DiffusionDet model and task. The only model-side code that reads the config.

- :func:`build_backbone`: ``MODEL.BACKBONE.NAME`` ``build_resnet_fpn_backbone`` (ResNet-18/34/50/101
  FPN) or ``build_swintransformer_fpn_backbone`` (Swin FPN), the official names, or
  ``build_timm_fpn_backbone`` (any timm CNN + FPN, ``MODEL.TIMM.*``).
- :func:`build_model`: backbone + head + criterion -> :class:`DiffusionDet` on ``MODEL.DEVICE``
  (``MODEL.RESNETS.NORM: SyncBN`` = trainable BN synchronised over processes).

The task (``MODEL.META_ARCHITECTURE: DiffusionDet``) is an instance of the contract in
``docs/internals.md``: ``build_model``, ``build_train_loader``, ``build_test_loader`` (images with
per-image sampling seeds), ``build_evaluator`` (COCO or LVIS).
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import torch
from torch import nn

from diffvision.config import CfgNode
from diffvision.engine.sync_bn import convert_sync_batchnorm
from diffvision.engine.tasks import register_task
from diffvision.errors import ConfigError
from diffvision.modeling.fpn import FPN, build_resnet_fpn_backbone, build_swin_fpn_backbone
from diffvision.modeling.timm_backbone import add_timm_config, build_timm_fpn_backbone

from .config import add_diffusiondet_config
from .detector import DiffusionDet
from .head import DynamicHead

__all__ = [
    "DIFFUSIONDET_TASK",
    "build_backbone",
    "build_evaluator",
    "build_model",
    "build_test_loader",
    "build_train_loader",
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
        raise ConfigError(
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
                raise ConfigError(f"MODEL.RESNETS.{key} = {value!r} is unsupported ({supported!r})")
        backbone = build_resnet_fpn_backbone(
            depth=r.DEPTH,
            freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
            in_features=fpn_in,
            out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
            stride_in_1x1=r.STRIDE_IN_1X1,
            stem_channels=r.STEM_OUT_CHANNELS,
            res2_channels=r.RES2_OUT_CHANNELS,
            norm="BN" if r.NORM == "SyncBN" else r.NORM,
        )
        return convert_sync_batchnorm(backbone) if r.NORM == "SyncBN" else backbone
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
    raise ConfigError(
        f"MODEL.BACKBONE.NAME {name!r} is not one of ['build_resnet_fpn_backbone', "
        "'build_swintransformer_fpn_backbone', 'build_timm_fpn_backbone']"
    )


def _build_criterion(cfg: CfgNode, d: CfgNode, criterion_cls: type | None = None) -> nn.Module:
    from .criterion import SetCriterionDynamicK

    criterion_cls = criterion_cls or SetCriterionDynamicK
    fed_weights = None
    if d.USE_FED_LOSS:
        from .data import build_fed_loss_cls_weights

        fed_weights = build_fed_loss_cls_weights(cfg)
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
    criterion_cls: type | None = None,
    head_kwargs: dict[str, Any] | None = None,
) -> DiffusionDet:
    """:func:`build_model` with the model's key section ``d``, classes and extra head arguments
    as arguments, for the tasks built on DiffusionDet (DiffusionInst: ``MODEL.DiffusionInst``
    and its subclasses)."""
    if d.ACTIVATION != "relu":
        raise ConfigError(f"MODEL.DiffusionDet.ACTIVATION {d.ACTIVATION!r} is not supported (relu)")
    if not (d.USE_FOCAL or d.USE_FED_LOSS):
        raise ConfigError("MODEL.DiffusionDet needs USE_FOCAL or USE_FED_LOSS (sigmoid scores)")
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
    model.head.compile_fast_path = bool(d.COMPILE)
    return model.to(torch.device(cfg.MODEL.DEVICE))


def build_inference_model(cfg: CfgNode) -> DiffusionDet:
    """The tools' model: inference-only :func:`build_model` with ``MODEL.WEIGHTS`` loaded by
    the engine's :func:`~diffvision.engine.weights.load_weights` (a warning when it is empty),
    in eval mode."""
    from diffvision.engine.weights import load_weights

    model = build_model(cfg, with_criterion=False)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: the model keeps its random initialisation")
    return model.eval()


def image_seed(seed: int, image_id: Any) -> int:
    """Per-image sampling seed from ``SEED`` and the image id (independent of batching/sharding)."""
    return (int(seed) * 1_000_003 + zlib.crc32(str(image_id).encode())) % (2**62)


def build_train_loader(cfg: CfgNode, *, start_iter: int = 0):
    from .data import build_detection_train_loader

    return build_detection_train_loader(cfg, start_iter=start_iter)


def build_test_loader(cfg: CfgNode, dataset_name: str):
    """This rank's test batches; with ``SEED >= 0`` every image carries ``seed`` =
    :func:`image_seed` (``SEED``, ``image_id``) so its sampled boxes (and AP) are reproducible."""
    from .data import build_detection_test_loader

    return build_detection_test_loader(cfg, dataset_name, seed=cfg.SEED if cfg.SEED >= 0 else None)


def build_evaluator(cfg: CfgNode, dataset_name: str):
    from .data import build_detection_evaluator

    return build_detection_evaluator(cfg, dataset_name, cfg.OUTPUT_DIR)


def build_inference(cfg: CfgNode):
    """The evaluation call: ``model(inputs)`` (each image's ``seed`` drives its draws), or with
    ``TEST.AUG.ENABLED`` the test-time augmentation of :mod:`projects.detection.tta` around the
    model, seeded by the same per-image seeds."""
    if not cfg.TEST.AUG.ENABLED:
        return None
    from .tta import build_tta

    built: dict[str, Any] = {}  # the wrapper, built once per evaluated model (live or EMA)

    def run(model: nn.Module, inputs: list[dict]) -> list[dict]:
        detector = getattr(model, "module", model)
        if built.get("model") is not detector:
            built.update(model=detector, tta=build_tta(cfg, detector))
        seeds = [x.get("seed") for x in inputs]
        return built["tta"](inputs, seeds=None if any(s is None for s in seeds) else seeds)

    return run


DIFFUSIONDET_TASK = register_task(
    "DiffusionDet",
    add_config=_add_config,
    build_model=build_model,
    build_train_loader=build_train_loader,
    build_test_loader=build_test_loader,
    build_evaluator=build_evaluator,
    build_inference=build_inference,
)
