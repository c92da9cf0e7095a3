"""Config keys of the segmentation tasks (``MODEL.DDEP``, ``MODEL.PIXEL_MLP``, ``SEG``).

Shared keys used from the default tree: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``,
``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``, ``MODEL.WEIGHTS``, ``DATASETS.TRAIN/TEST``,
``SOLVER.IMS_PER_BATCH``, ``DATALOADER.NUM_WORKERS``, ``SEED``, ``OUTPUT_DIR``.
"""

from __future__ import annotations

from diffvision.config import CN
from diffvision.config.ranges import register_ranges

__all__ = ["add_ddep_config", "add_pixel_mlp_config", "add_seg_config"]


def add_seg_config(cfg: CN) -> None:
    """Data and evaluation keys shared by both segmentation tasks (idempotent)."""
    if "SEG" in cfg:
        return
    cfg.SEG = CN()
    # Labeled subset: "full", "1/4", "1/8", "1/30", a float, or a count such as "100".
    cfg.SEG.LABEL_FRACTION = "full"
    # > 0: an absolute number of labeled images instead of LABEL_FRACTION.
    cfg.SEG.LABEL_COUNT = 0
    cfg.SEG.FRACTION_SEED = 0
    # Optional split-list file (one image per line); overrides LABEL_FRACTION.
    cfg.SEG.SPLIT_FILE = ""
    # Training augmentation: resize to BASE_SIZE (h, w; 0 = keep) times a random factor in
    # SCALE_RANGE, then random crop CROP_SIZE (padded with the ignore value), then h-flip.
    cfg.SEG.BASE_SIZE = (0, 0)
    cfg.SEG.SCALE_RANGE = (0.5, 2.0)
    cfg.SEG.CROP_SIZE = (512, 1024)
    cfg.SEG.FLIP_PROB = 0.5
    # Evaluation: "whole" or "slide" (window / stride in pixels); RESIZE (h, w; 0 = keep) scales
    # the test input, logits are resized back to the label size.
    cfg.SEG.TEST_MODE = "whole"
    cfg.SEG.TEST_RESIZE = (0, 0)
    cfg.SEG.TEST_WINDOW = (512, 1024)
    cfg.SEG.TEST_STRIDE = (341, 683)
    # Number of image | GT | prediction overlays written to OUTPUT_DIR/vis.
    cfg.SEG.NUM_VIS = 4
    # Side of the generated toy scenes (toy_scenes_* datasets).
    cfg.SEG.TOY_IMAGE_SIZE = 64


def add_ddep_config(cfg: CN) -> None:
    """``MODEL.DDEP``: the DDeP segmenter and its denoising pretraining."""
    from diffvision.modeling.timm_backbone import add_timm_config

    add_seg_config(cfg)
    add_timm_config(cfg)  # MODEL.TIMM.*: the encoder of MODEL.DDEP.ENCODER "timm:<name>"
    cfg.MODEL.DDEP = CN()
    # "denoise" (stage 2: decoder denoising pretraining) or "segment" (stage 3: fine-tuning).
    cfg.MODEL.DDEP.MODE = "segment"
    # torchvision "resnet18/34/50/101", or "timm:<timm name>" (MODEL.TIMM.*, FREEZE_AT from
    # MODEL.BACKBONE.FREEZE_AT).
    cfg.MODEL.DDEP.ENCODER = "resnet50"
    # torchvision ImageNet state dict (local path or URL); "" = random init.
    cfg.MODEL.DDEP.ENCODER_WEIGHTS = ""
    cfg.MODEL.DDEP.DECODER_CHANNELS = [256, 128, 64, 32, 16]
    # > 0: TransUNet-style Transformer bottleneck on stride 16 (DECODER_CHANNELS then has 4).
    cfg.MODEL.DDEP.TRANSFORMER_LAYERS = 0
    cfg.MODEL.DDEP.TRANSFORMER_DIM = 768
    cfg.MODEL.DDEP.TRANSFORMER_HEADS = 12
    # Corruption: "fixed" (one level, gamma = 1/(1+sigma^2)) or "schedule" (t ~ U over the
    # named core schedule: the multi-level variant).
    cfg.MODEL.DDEP.NOISE_LEVELS = "fixed"
    cfg.MODEL.DDEP.NOISE_SIGMA = 0.22
    cfg.MODEL.DDEP.NOISE_SCHEDULE = "linear"
    cfg.MODEL.DDEP.NUM_TIMESTEPS = 1000
    # Denoise mode: encoder frozen and kept in eval mode.
    cfg.MODEL.DDEP.FREEZE_ENCODER = True
    # "BN", or "SyncBN": batch statistics over the global batch of all processes.
    cfg.MODEL.DDEP.NORM = "BN"


def add_pixel_mlp_config(cfg: CN) -> None:
    """``MODEL.PIXEL_MLP``: few-shot pixel classifiers on frozen DDPM features."""
    add_seg_config(cfg)
    cfg.MODEL.PIXEL_MLP = CN()
    # "ddpm" (UNet decoder activations) or "raw" (the pixel's RGB in [-1, 1]).
    cfg.MODEL.PIXEL_MLP.FEATURES = "ddpm"
    # One of: a diffvision DDPM checkpoint (load_ddpm_unet), or a guided-diffusion .pt with
    # its flag string (use_fp16 is turned off on CPU), or RANDOM_UNET.
    cfg.MODEL.PIXEL_MLP.DDPM_CHECKPOINT = ""
    cfg.MODEL.PIXEL_MLP.GUIDED_DIFFUSION_CHECKPOINT = ""
    cfg.MODEL.PIXEL_MLP.GUIDED_DIFFUSION_FLAGS = (
        "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 "
        "--dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear "
        "--num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
        "--use_fp16 True --use_scale_shift_norm True"
    )
    # Untrained baseline: random weights (with DDPM_CHECKPOINT: that run's architecture).
    cfg.MODEL.PIXEL_MLP.RANDOM_UNET = False
    cfg.MODEL.PIXEL_MLP.NOISE_SCHEDULE = "linear"  # for guided-diffusion / random UNets
    cfg.MODEL.PIXEL_MLP.STEPS = [50, 150, 250]
    cfg.MODEL.PIXEL_MLP.BLOCKS = [5, 6, 7, 8, 12]
    cfg.MODEL.PIXEL_MLP.NOISE_SEED = 0
    # Square side the images are resized to (the UNet's resolution); 0 = keep.
    cfg.MODEL.PIXEL_MLP.IMAGE_SIZE = 256
    cfg.MODEL.PIXEL_MLP.NUM_MODELS = 10
    # "BN", or "SyncBN": the MLPs' batch statistics over the global batch of all processes.
    cfg.MODEL.PIXEL_MLP.NORM = "BN"
    # Labeled pixels kept per training image (uniform among non-ignored pixels); 0 = all.
    cfg.MODEL.PIXEL_MLP.PIXELS_PER_IMAGE = 4096
    cfg.MODEL.PIXEL_MLP.FEATURE_DTYPE = "float16"
    # Pixels per MLP per iteration (the reference's "batch_size": 64).
    cfg.MODEL.PIXEL_MLP.BATCH_PIXELS = 64
    # "vote" (1 - share of models agreeing with the mode) or "entropy" (mean per-model entropy).
    cfg.MODEL.PIXEL_MLP.UNCERTAINTY = "vote"
    # Pixels per chunk when predicting a whole image (bounds inference memory).
    cfg.MODEL.PIXEL_MLP.CHUNK_PIXELS = 8192


register_ranges(
    {
        "DDEP.DECODER_CHANNELS": ">=1", "DDEP.NOISE_SIGMA": ">=0", "DDEP.NUM_TIMESTEPS": ">=1",
        "DDEP.TRANSFORMER_LAYERS": ">=0", "PIXEL_MLP.STEPS": ">=0", "PIXEL_MLP.IMAGE_SIZE": ">=1",
        "PIXEL_MLP.NUM_MODELS": ">=1", "PIXEL_MLP.PIXELS_PER_IMAGE": ">=0",
        "PIXEL_MLP.BATCH_PIXELS": ">=1", "PIXEL_MLP.CHUNK_PIXELS": ">=1",
    },
    prefix="MODEL.",
)  # fmt: skip
register_ranges(
    {
        "LABEL_COUNT": ">=0", "FLIP_PROB": "[0,1]", "CROP_SIZE": ">=1", "NUM_VIS": ">=0",
        "TOY_IMAGE_SIZE": ">=1",
    },
    prefix="SEG.",
)  # fmt: skip
