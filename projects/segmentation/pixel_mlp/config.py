"""Config keys of the PixelMLP task (``MODEL.PIXEL_MLP``), their defaults and valid ranges, side
by side. The shared segmentation keys (``SEG``, ``MODEL.SEM_SEG_HEAD``) come from
:mod:`projects.segmentation.config`."""

from __future__ import annotations

from diffvision.config import CfgNode
from diffvision.config.ranges import Ranged, add_keys
from projects.segmentation.config import add_seg_config

__all__ = ["add_pixel_mlp_config"]


def add_pixel_mlp_config(cfg: CfgNode) -> None:
    """``MODEL.PIXEL_MLP``: few-shot pixel classifiers on frozen DDPM features."""
    add_seg_config(cfg)
    add_keys(cfg, "MODEL.PIXEL_MLP", {
        # "ddpm" (UNet decoder activations) or "raw" (the pixel's RGB in [-1, 1]).
        "FEATURES": "ddpm",
        # One of: a diffvision DDPM checkpoint (load_ddpm_unet), or a guided-diffusion .pt with
        # its flag string (use_fp16 is turned off on CPU), or RANDOM_UNET.
        "DDPM_CHECKPOINT": "",
        "GUIDED_DIFFUSION_CHECKPOINT": "",
        "GUIDED_DIFFUSION_FLAGS": (
            "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 "
            "--dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear "
            "--num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
            "--use_fp16 True --use_scale_shift_norm True"
        ),
        # Untrained baseline: random weights (with DDPM_CHECKPOINT: that run's architecture).
        "RANDOM_UNET": False,
        "NOISE_SCHEDULE": "linear",  # for guided-diffusion / random UNets
        "STEPS": Ranged([50, 150, 250], ">=0"),
        "BLOCKS": Ranged([5, 6, 7, 8, 12], ">=0"),
        "NOISE_SEED": 0,
        # Square side the images are resized to (the UNet's resolution); 0 = keep the size.
        "IMAGE_SIZE": Ranged(256, ">=0"),
        "NUM_MODELS": Ranged(10, ">=1"),
        # "BN", or "SyncBN": the MLPs' batch statistics over the global batch of all processes.
        "NORM": "BN",
        # Labeled pixels kept per training image (uniform among non-ignored pixels); 0 = all.
        "PIXELS_PER_IMAGE": Ranged(4096, ">=0"),
        "FEATURE_DTYPE": "float16",
        # Pixels per MLP per iteration (the reference's "batch_size": 64).
        "BATCH_PIXELS": Ranged(64, ">=1"),
        # "vote" (1 - share of models agreeing with the mode) or "entropy" (mean per-model entropy).
        "UNCERTAINTY": "vote",
        # Pixels per chunk when predicting a whole image (bounds inference memory).
        "CHUNK_PIXELS": Ranged(8192, ">=1"),
    })  # fmt: skip
