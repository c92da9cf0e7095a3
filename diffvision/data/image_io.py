"""Reading images for detection: RGB uint8 with the EXIF orientation applied.

Matches detectron2's ``read_image(..., format="RGB")`` (PIL decode, ``ImageOps.exif_transpose``),
which is what DiffusionDet's mapper uses (``diffusiondet/dataset_mapper.py``).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from diffvision.errors import DataError, InputFileNotFoundError

__all__ = ["read_image_rgb"]


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: image file (any format PIL reads).

    Returns:
        (H, W, 3) uint8 array, RGB, EXIF orientation applied (so H, W are the displayed size).

    Raises:
        InputFileNotFoundError: the file does not exist, or is a folder.
        DataError: the file exists but cannot be decoded (truncated or not an image).
    """
    if os.path.isdir(path):
        raise InputFileNotFoundError(f"image {path} is a folder, expected an image file")
    if not os.path.isfile(path):
        raise InputFileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
