"""Reading images for detection: RGB uint8 with the EXIF orientation applied.

Matches detectron2's ``read_image(..., format="RGB")`` (PIL decode, ``ImageOps.exif_transpose``),
which is what DiffusionDet's mapper uses (reference ``diffusiondet.md`` §4.5).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["read_image_rgb"]


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: image file (any format PIL reads).

    Returns:
        (H, W, 3) uint8 array, RGB, EXIF orientation applied (so H, W are the displayed size).

    Raises:
        FileNotFoundError: the file does not exist.
        OSError: the file exists but cannot be decoded (truncated or not an image).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise OSError(f"cannot read image {path}: {e}") from e
