"""Config keys shared by the segmentation tasks (DDeP, PixelMLP), their defaults and valid
ranges: the labeled subset, the training augmentation, the evaluation (``SEG``) and the class
count (``MODEL.SEM_SEG_HEAD``). Each task adds its own section in its ``config.py``."""

from __future__ import annotations

from diffvision.config import CfgNode
from diffvision.config.ranges import Ranged, add_keys

__all__ = ["add_seg_config"]


def add_seg_config(cfg: CfgNode) -> None:
    """Data and evaluation keys shared by both segmentation tasks (idempotent)."""
    add_keys(cfg, "MODEL.SEM_SEG_HEAD", {
        "NUM_CLASSES": Ranged(19, ">=1"),
        "IGNORE_VALUE": 255,
        # Fine-tuning loss weight of class c: (share of c in the labeled training pixels) to the
        # power -CLASS_WEIGHT_POWER, scaled so the average pixel weighs 1. 0 = plain
        # cross-entropy; 0.5 (inverse square root) lifts thin or rare classes.
        "CLASS_WEIGHT_POWER": Ranged(0.0, ">=0"),
    })  # fmt: skip
    add_keys(cfg, "SEG", {
        # Labeled subset: "full", "1/4", "1/8", "1/30", a float, or a count such as "100".
        "LABEL_FRACTION": "full",
        # > 0: an absolute number of labeled images instead of LABEL_FRACTION.
        "LABEL_COUNT": Ranged(0, ">=0"),
        "FRACTION_SEED": 0,
        # Optional split-list file (one image per line); overrides LABEL_FRACTION.
        "SPLIT_FILE": "",
        # Training augmentation: resize to BASE_SIZE (h, w; 0 = keep) times a random factor in
        # SCALE_RANGE, then random crop CROP_SIZE (padded with the ignore value), then h-flip.
        "BASE_SIZE": Ranged((0, 0), ">=0"),
        "SCALE_RANGE": Ranged((0.5, 2.0), ">0"),
        "CROP_SIZE": Ranged((512, 1024), ">=1"),
        "FLIP_PROB": Ranged(0.5, "[0,1]"),
        # Evaluation: "whole" or "slide" (window / stride in pixels); RESIZE (h, w; 0 = keep)
        # or else SCALE (a factor, the training SCALE_RANGE's middle for a set of many image
        # sizes) scales the test input; logits are resized back to the label size.
        "TEST_MODE": "whole",
        "TEST_RESIZE": Ranged((0, 0), ">=0"),
        "TEST_SCALE": Ranged(1.0, ">0"),
        "TEST_WINDOW": Ranged((512, 1024), ">=1"),
        "TEST_STRIDE": Ranged((341, 683), ">=1"),
        # Number of image | GT | prediction overlays written to OUTPUT_DIR/vis.
        "NUM_VIS": Ranged(4, ">=0"),
        # Side of the generated toy scenes (toy_scenes_* datasets).
        "TOY_IMAGE_SIZE": Ranged(64, ">=1"),
    })  # fmt: skip
