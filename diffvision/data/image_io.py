"""The one image reader of every tool and dataset: any PIL mode to RGB uint8, limits as DataError.

:func:`read_image_rgb` matches detectron2's ``read_image(..., format="RGB")`` (PIL decode,
``ImageOps.exif_transpose``) for the 8-bit modes, which is what DiffusionDet's mapper uses, and
converts the modes that PIL's own ``convert("RGB")`` gets wrong:

=========================  =================================================================
mode                       conversion
=========================  =================================================================
``1``, ``L``, ``P``        grey / palette expanded to RGB (``P`` with transparency via RGBA)
``LA``, ``PA``, ``RGBA``   alpha dropped (the colour channels as stored), like detectron2
``I;16``, ``I;16B/L/N``    16-bit grey scaled by 255 / 65535 (PIL would clip at 255: white)
``I`` (32-bit integer)     8-bit values kept; 16-bit range scaled by 255 / 65535; larger by
                           255 / max; negative values clipped to 0
``F`` (32-bit float)       values in [0, 1] scaled by 255, else clipped to [0, 255]
=========================  =================================================================

Every failure is a :class:`~diffvision.errors.DataError` naming the file: not decodable, a zero
width or height, or more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb: the
size is read from the header, nothing is decoded). The demo skips such a file with a warning,
the datasets drop it with a logged count (:func:`image_size` at registration,
:func:`readable_images`).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from diffvision.errors import DataError, InputFileNotFoundError

__all__ = ["image_size", "open_image", "read_image_rgb", "readable_images", "to_rgb_array"]

logger = logging.getLogger(__name__)

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


def _check_path(path: str | os.PathLike, what: str) -> None:
    if os.path.isdir(path):
        raise InputFileNotFoundError(f"{what} {path} is a folder, expected an image file")
    if not os.path.isfile(path):
        raise InputFileNotFoundError(f"{what} file not found: {path}")


def _check_size(image: Image.Image, path: str | os.PathLike, what: str) -> None:
    """Zero-size and decompression-bomb limits, from the header only."""
    width, height = image.size
    if width < 1 or height < 1:
        raise DataError(f"{what} {path} is {width}x{height} pixels; expected at least 1x1")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise DataError(
            f"{what} {path} is {width}x{height} = {width * height:,} pixels, more than the "
            f"limit of {limit:,} (PIL.Image.MAX_IMAGE_PIXELS; a decompression bomb?)"
        )


def open_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open and decode an image file, size limits checked before decoding.

    Args:
        path: the file.
        what: the word for it in messages (``"image"``, ``"mask"``).

    Returns:
        the decoded PIL image in its stored mode (no EXIF rotation).

    Raises:
        InputFileNotFoundError: the file does not exist, or is a folder.
        DataError: not decodable, zero-size, or larger than ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    _check_path(path, what)
    try:
        with warnings.catch_warnings():
            # the size limit is checked below, with a message that names the file
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        _check_size(image, path, what)
        image.load()
    except Image.DecompressionBombError as exc:  # PIL's own limit (2x MAX_IMAGE_PIXELS)
        raise DataError(f"{what} {path}: {exc}") from None
    except _DECODE_ERRORS as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read {what} {path}: {exc}") from exc
    return image


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` as :func:`read_image_rgb` returns the image (EXIF rotation applied),
    read from the header only.

    Raises:
        InputFileNotFoundError, DataError: as :func:`open_image` (without decoding the pixels).
    """
    _check_path(path, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(image, path, "image")
                width, height = image.size
                if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                    width, height = height, width
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {path}: {exc}") from None
    except _DECODE_ERRORS as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return width, height


def readable_images(paths: list[Path]) -> list[Path]:
    """``paths`` without the files that cannot be read (the header checks of
    :func:`image_size`: undecodable, zero-size, too large); the dropped files are logged by name
    with their count, so a dataset loses them visibly instead of stopping mid-run."""
    kept, dropped = [], []
    for path in paths:
        try:
            image_size(path)
        except (DataError, InputFileNotFoundError) as exc:
            dropped.append(str(exc))
            continue
        kept.append(path)
    if dropped:
        logger.warning(
            "dropped %d of %d images that cannot be read: %s%s",
            len(dropped),
            len(paths),
            "; ".join(dropped[:3]),
            " ..." if len(dropped) > 3 else "",
        )
    return kept


def _grey_to_uint8(grey: np.ndarray, mode: str) -> np.ndarray:
    """A single-channel integer or float image as uint8, scaled as the module table says."""
    values = grey.astype(np.float64)
    if mode == "F":
        finite = values[np.isfinite(values)]
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            values = values * 255.0
    elif mode.startswith("I;16"):
        values = values * (255.0 / 65535.0)
    else:  # "I": 32-bit integers holding 8-bit, 16-bit or wider values
        top = values.max(initial=0.0)
        if top > 65535:
            values = values * (255.0 / top)
        elif top > 255:
            values = values * (255.0 / 65535.0)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """A decoded PIL image of any mode as an (H, W, 3) uint8 RGB array (see the module table)."""
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        grey = _grey_to_uint8(np.asarray(image), mode)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: image file (any format and mode PIL reads).

    Returns:
        (H, W, 3) uint8 array, RGB, EXIF orientation applied (so H, W are the displayed size).

    Raises:
        InputFileNotFoundError: the file does not exist, or is a folder.
        DataError: the file cannot be decoded (truncated or not an image), has a zero width or
            height, or more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    with open_image(path) as image:
        try:
            return to_rgb_array(ImageOps.exif_transpose(image))
        except _DECODE_ERRORS as exc:
            raise DataError(f"cannot read image {Path(path)}: {exc}") from exc
