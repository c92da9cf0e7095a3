"""Unlabelled (or folder-labelled) image datasets for generative training.

Images are found recursively under a root folder (any depth, common formats), centre-cropped to a
square, resized to ``image_size`` and scaled to [-1, 1] as in Ho et al. 2020 (arXiv:2006.11239,
Sec. 3.3: "data scaled linearly to [-1, 1]") and guided-diffusion's ``image_datasets.py``.
Labels, when wanted, are the index of an image's top-level sub-folder in sorted order
(torchvision ``ImageFolder`` convention).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from diffvision.data.image_io import read_image_rgb, readable_images
from diffvision.errors import InputFileNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "list_images", "load_image", "to_tensor"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")


def list_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursive, sorted, case-insensitive extensions).

    Raises:
        InputFileNotFoundError: if ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is a file, expected a folder" if root.is_file() else "does not exist"
        raise InputFileNotFoundError(f"image folder {root} {what}")
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def load_image(path: str | Path, image_size: int) -> Image.Image:
    """Read an image as RGB (:func:`~diffvision.data.image_io.read_image_rgb`), centre-crop it to
    a square and resize it to ``image_size``.

    Downscaling uses box filtering down to < 2× the target then bicubic, like ADM's
    ``center_crop_arr``, which avoids the aliasing of a single bicubic resize.

    Raises:
        InputFileNotFoundError: ``path`` does not exist.
        DataError: ``path`` cannot be decoded, is zero-size or too large (the message names it).
    """
    img = Image.fromarray(read_image_rgb(path))
    w, h = img.size
    side = min(w, h)
    img = img.crop(
        ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    )
    while img.size[0] >= 2 * image_size:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), Image.Resampling.BOX)
    if img.size[0] != image_size:
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return img


def to_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    """uint8 HWC image → float32 ``(3, H, W)`` tensor in [-1, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)


class ImageFolderDataset(Dataset):
    """Images under a folder, as ``(image (3, S, S) in [-1, 1], label int)`` pairs.

    Args:
        root: folder searched recursively.
        image_size: output side ``S``.
        random_flip: horizontal flip with probability 0.5.
        class_from_dir: label = index of the top-level sub-folder (sorted); else every label is 0.
        extensions: accepted file suffixes (lower case).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        image_size: int,
        random_flip: bool = True,
        class_from_dir: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ):
        self.root = Path(root)
        self.image_size = int(image_size)
        self.random_flip = random_flip
        exts = tuple(e.lower() for e in extensions)
        self.paths = readable_images(
            [p for p in list_images(self.root) if p.suffix.lower() in exts]
        )
        if not self.paths:
            raise FileNotFoundError(f"no images with suffix {exts} under {self.root}")
        if class_from_dir:
            top = [
                p.relative_to(self.root).parts[0] if len(p.relative_to(self.root).parts) > 1 else ""
                for p in self.paths
            ]
            self.classes = sorted(set(top))
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = [index[c] for c in top]
        else:
            self.classes = [""]
            self.labels = [0] * len(self.paths)
        logger.info("ImageFolderDataset: %d images in %s", len(self.paths), self.root)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = to_tensor(load_image(self.paths[index], self.image_size))  # (3, S, S)
        if self.random_flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img, self.labels[index]
