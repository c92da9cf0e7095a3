"""Paired image/mask transforms for semantic segmentation.

Every transform takes and returns ``(image, mask)`` where

- ``image`` is a ``uint8`` tensor ``(3, H, W)`` (RGB, 0..255),
- ``mask`` is an ``int64`` tensor ``(H, W)`` of class indices with ``ignore_label`` (255) for
  unlabeled pixels, or ``None`` for unlabeled images (denoising pretraining).

Images are resized bilinearly, masks with nearest neighbour only (interpolating class ids is
meaningless), and padding fills masks with ``ignore_label`` so padded pixels never enter the loss
— the conventions of mmsegmentation's Cityscapes pipeline
(``configs/_base_/datasets/cityscapes.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "SegAugmentation",
    "pad_to_size",
    "random_crop",
    "random_hflip",
    "resize",
    "to_unit_range",
]

Mask = torch.Tensor | None


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """Map ``uint8`` images to the diffusion range [-1, 1].

    Args:
        image: ``(..., 3, H, W)`` uint8 or float in [0, 255].

    Returns:
        float32 tensor of the same shape, ``x = image / 127.5 - 1``.
    """
    return image.float() / 127.5 - 1.0


def resize(image: torch.Tensor, mask: Mask, *, size: tuple[int, int]) -> tuple[torch.Tensor, Mask]:
    """Resize to ``size = (height, width)``: bilinear for the image, nearest for the mask."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, mask
    image_f = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)
    image = image_f[0].round().clamp(0, 255).to(image.dtype)
    if mask is not None:
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, mask


def pad_to_size(
    image: torch.Tensor, mask: Mask, *, size: tuple[int, int], ignore_label: int = 255
) -> tuple[torch.Tensor, Mask]:
    """Pad bottom/right up to at least ``size``; image with 0, mask with ``ignore_label``."""
    pad_h = max(size[0] - image.shape[-2], 0)
    pad_w = max(size[1] - image.shape[-1], 0)
    if pad_h == 0 and pad_w == 0:
        return image, mask
    image = F.pad(image, (0, pad_w, 0, pad_h), value=0)
    if mask is not None:
        mask = F.pad(mask, (0, pad_w, 0, pad_h), value=ignore_label)
    return image, mask


def random_crop(
    image: torch.Tensor,
    mask: Mask,
    *,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
    ignore_label: int = 255,
) -> tuple[torch.Tensor, Mask]:
    """Crop a random ``size`` window, padding first when the image is smaller."""
    image, mask = pad_to_size(image, mask, size=size, ignore_label=ignore_label)
    height, width = image.shape[-2:]
    top = int(torch.randint(0, height - size[0] + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size[1] + 1, (1,), generator=generator))
    image = image[:, top : top + size[0], left : left + size[1]]
    if mask is not None:
        mask = mask[top : top + size[0], left : left + size[1]]
    return image, mask


def random_hflip(
    image: torch.Tensor, mask: Mask, *, prob: float = 0.5, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, Mask]:
    """Flip left-right with probability ``prob``."""
    if float(torch.rand((), generator=generator)) < prob:
        image = image.flip(-1)
        if mask is not None:
            mask = mask.flip(-1)
    return image, mask


class SegAugmentation:
    """Training augmentation: random scale → random crop (pad with ignore) → horizontal flip.

    Args:
        crop_size: ``(height, width)`` of the output; ``None`` keeps the (scaled) size.
        scale_range: ``(min, max)`` factor applied to the base size, uniformly sampled; the
            mmseg/DeepLab Cityscapes recipe uses ``(0.5, 2.0)``.
        base_size: ``(height, width)`` the scale factor multiplies; ``None`` uses the input size.
        flip_prob: probability of a horizontal flip.
        ignore_label: mask value for padded pixels.
        generator: optional ``torch.Generator`` for reproducible draws.
    """

    def __init__(
        self,
        *,
        crop_size: tuple[int, int] | None = None,
        scale_range: Sequence[float] = (1.0, 1.0),
        base_size: tuple[int, int] | None = None,
        flip_prob: float = 0.5,
        ignore_label: int = 255,
        generator: torch.Generator | None = None,
    ) -> None:
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(
                f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}"
            )
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}")
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.base_size = tuple(base_size) if base_size is not None else None
        self.flip_prob = flip_prob
        self.ignore_label = ignore_label
        self.generator = generator

    def __call__(self, image: torch.Tensor, mask: Mask) -> tuple[torch.Tensor, Mask]:
        lo, hi = self.scale_range
        if lo != hi or self.base_size is not None:
            scale = lo + (hi - lo) * float(torch.rand((), generator=self.generator))
            base_h, base_w = self.base_size or tuple(image.shape[-2:])
            size = (max(int(round(base_h * scale)), 1), max(int(round(base_w * scale)), 1))
            image, mask = resize(image, mask, size=size)
        if self.crop_size is not None:
            image, mask = random_crop(
                image,
                mask,
                size=self.crop_size,
                generator=self.generator,
                ignore_label=self.ignore_label,
            )
        return random_hflip(image, mask, prob=self.flip_prob, generator=self.generator)
