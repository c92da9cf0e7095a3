"""Config keys of the DDeP task (``MODEL.DDEP``), their defaults and valid ranges, side by side.
The shared segmentation keys (``SEG``, ``MODEL.SEM_SEG_HEAD``) come from
:mod:`projects.segmentation.config`, the encoder's from :mod:`diffvision.modeling.backbones`."""

from __future__ import annotations

from diffvision.config import CfgNode
from diffvision.config.ranges import Ranged, add_keys
from diffvision.modeling.backbones import add_backbone_config
from projects.segmentation.config import add_seg_config

__all__ = ["add_ddep_config"]


def add_ddep_config(cfg: CfgNode) -> None:
    """``MODEL.DDEP``: the DDeP segmenter and its denoising pretraining."""
    add_seg_config(cfg)
    add_backbone_config(cfg)  # MODEL.TIMM.*, MODEL.BACKBONE.FREEZE_AT of a timm encoder
    add_keys(cfg, "MODEL.DDEP", {
        # "denoise" (stage 2: decoder denoising pretraining) or "segment" (stage 3: fine-tuning).
        "MODE": "segment",
        # torchvision "resnet18/34/50/101", or "timm:<timm name>" (MODEL.TIMM.*, FREEZE_AT from
        # MODEL.BACKBONE.FREEZE_AT).
        "ENCODER": "resnet50",
        # torchvision ImageNet state dict (local path or URL); "" = random init.
        "ENCODER_WEIGHTS": "",
        "DECODER_CHANNELS": Ranged([256, 128, 64, 32, 16], ">=1"),
        # > 0: TransUNet-style Transformer bottleneck on stride 16 (DECODER_CHANNELS then has 4).
        "TRANSFORMER_LAYERS": Ranged(0, ">=0"),
        "TRANSFORMER_DIM": Ranged(768, ">=1"),
        "TRANSFORMER_HEADS": Ranged(12, ">=1"),
        # Corruption: "fixed" (one level, gamma = 1/(1+sigma^2)) or "schedule" (t ~ U over the
        # named core schedule: the multi-level variant).
        "NOISE_LEVELS": "fixed",
        "NOISE_SIGMA": Ranged(0.22, ">0"),
        "NOISE_SCHEDULE": "linear",
        "NUM_TIMESTEPS": Ranged(1000, ">=21"),  # the linear schedule needs more than 20
        # Denoise mode: encoder frozen and kept in eval mode.
        "FREEZE_ENCODER": True,
        # "BN", or "SyncBN": batch statistics over the global batch of all processes.
        "NORM": "BN",
    })  # fmt: skip
