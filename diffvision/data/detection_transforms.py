"""Detection augmentations with detectron2's semantics (flip, shortest-edge resize, random crop).

An *augmentation* looks at an image and draws a deterministic *transform*; the transform is then
applied to the image and to its boxes. This split (detectron2's ``Augmentation``/``Transform``)
keeps images and boxes consistent. DiffusionDet's training pipeline (official
``diffusiondet/dataset_mapper.py``)::

    [RandomFlip, ResizeShortestEdge(MIN_SIZE_TRAIN, 1333)]                        p = 0.5
    [RandomFlip, ResizeShortestEdge([400, 500, 600], max=inf),
     RandomCrop("absolute_range", (384, 600)), ResizeShortestEdge(MIN_SIZE_TRAIN, 1333)]   p = 0.5

Resizing is PIL bilinear on uint8 images with detectron2's output size: ``scale = size / short
side``, the long side capped at ``max_size``, then ``int(x * scale + 0.5)``.

Randomness comes from ``numpy.random`` (module-level state), like detectron2: PyTorch seeds it
per data-loader worker, and tests seed it with ``np.random.seed``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

__all__ = [
    "Augmentation",
    "CropTransform",
    "FlipTransform",
    "RandomCrop",
    "RandomFlip",
    "ResizeShortestEdge",
    "ResizeTransform",
    "Transform",
    "apply_augmentations",
    "filter_empty_boxes",
    "resized_shape",
    "transform_boxes",
    "transform_masks",
]


# ---------------------------------------------------------------------------------------------
# Deterministic transforms
# ---------------------------------------------------------------------------------------------


class Transform:
    """A deterministic image + box transform."""

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) uint8 -> transformed (H', W', C) uint8."""
        raise NotImplementedError

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """(n, 4) absolute xyxy float -> transformed (n, 4) absolute xyxy."""
        raise NotImplementedError

    def apply_masks(self, masks: np.ndarray) -> np.ndarray:
        """(n, H, W) uint8 {0, 1} instance masks -> transformed (n, H', W'), consistent with
        :meth:`apply_image` (resizing is nearest-neighbour, detectron2's
        ``apply_segmentation``)."""
        raise NotImplementedError


@dataclass(frozen=True)
class FlipTransform(Transform):
    """Mirror an image of size ``(height, width)``; ``horizontal=False`` flips vertically."""

    height: int
    width: int
    horizontal: bool = True

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[:, ::-1] if self.horizontal else image[::-1])

    def apply_masks(self, masks: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(masks[:, :, ::-1] if self.horizontal else masks[:, ::-1])

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes.copy()
        if self.horizontal:
            out[:, 0] = self.width - boxes[:, 2]
            out[:, 2] = self.width - boxes[:, 0]
        else:
            out[:, 1] = self.height - boxes[:, 3]
            out[:, 3] = self.height - boxes[:, 1]
        return out


@dataclass(frozen=True)
class ResizeTransform(Transform):
    """Resize ``(h, w)`` -> ``(new_h, new_w)``, PIL bilinear (detectron2 ``ResizeTransform``)."""

    h: int
    w: int
    new_h: int
    new_w: int

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] != (self.h, self.w):
            raise ValueError(f"expected an image of size {(self.h, self.w)}, got {image.shape[:2]}")
        pil = Image.fromarray(image)
        return np.asarray(pil.resize((self.new_w, self.new_h), Image.Resampling.BILINEAR))

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        scale = np.array([self.new_w / self.w, self.new_h / self.h] * 2, dtype=boxes.dtype)
        return boxes * scale

    def apply_masks(self, masks: np.ndarray) -> np.ndarray:
        if masks.shape[1:] != (self.h, self.w):
            raise ValueError(f"expected masks of size {(self.h, self.w)}, got {masks.shape[1:]}")
        size = (self.new_w, self.new_h)
        out = [np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in masks]
        return np.stack(out) if out else np.zeros((0, self.new_h, self.new_w), dtype=masks.dtype)


@dataclass(frozen=True)
class CropTransform(Transform):
    """Keep the window ``[x0, x0 + w) x [y0, y0 + h)``."""

    x0: int
    y0: int
    w: int
    h: int

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return image[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        return boxes - np.array([self.x0, self.y0, self.x0, self.y0], dtype=boxes.dtype)

    def apply_masks(self, masks: np.ndarray) -> np.ndarray:
        return masks[:, self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]


# ---------------------------------------------------------------------------------------------
# Random augmentations
# ---------------------------------------------------------------------------------------------


class Augmentation:
    """Draws a :class:`Transform` for an image of a given size."""

    def get_transform(self, height: int, width: int) -> Transform | None:
        """Return the transform for an image of size ``(height, width)``, or None for identity."""
        raise NotImplementedError


class RandomFlip(Augmentation):
    """Flip with probability ``prob`` (detectron2 ``RandomFlip``).

    Args:
        prob: flip probability.
        direction: ``"horizontal"`` or ``"vertical"``.
    """

    def __init__(
        self, *, prob: float = 0.5, direction: Literal["horizontal", "vertical"] = "horizontal"
    ) -> None:
        if direction not in ("horizontal", "vertical"):
            raise ValueError(f"direction must be 'horizontal' or 'vertical', got {direction!r}")
        self.prob = prob
        self.direction = direction

    def get_transform(self, height: int, width: int) -> Transform | None:
        if np.random.rand() < self.prob:
            return FlipTransform(height, width, horizontal=self.direction == "horizontal")
        return None


def resized_shape(height: int, width: int, short_edge: int, max_size: float) -> tuple[int, int]:
    """Output size of detectron2's ``ResizeShortestEdge``.

    Args:
        height, width: input size.
        short_edge: target length of the short side.
        max_size: cap on the long side.

    Returns:
        ``(new_h, new_w)`` rounded as ``int(x + 0.5)``, at least 1 (an extreme aspect ratio such
        as 10000x10 would otherwise round its short side to 0 under the long-side cap).
    """
    scale = short_edge / min(height, width)
    new_h, new_w = (short_edge, scale * width) if height < width else (scale * height, short_edge)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


class ResizeShortestEdge(Augmentation):
    """Resize the short side to a sampled length, capping the long side (detectron2).

    Args:
        short_edge_length: candidate lengths (``"choice"``) or ``(min, max)`` (``"range"``).
        max_size: cap on the long side (default: none).
        sample_style: ``"choice"`` or ``"range"``.
    """

    def __init__(
        self,
        *,
        short_edge_length: int | Sequence[int],
        max_size: float = sys.maxsize,
        sample_style: Literal["choice", "range"] = "choice",
    ) -> None:
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        if sample_style not in ("choice", "range"):
            raise ValueError(f"sample_style must be 'choice' or 'range', got {sample_style!r}")
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError(
                f"sample_style 'range' needs (min, max) short_edge_length, got {short_edge_length}"
            )
        self.short_edge_length = tuple(int(s) for s in short_edge_length)
        self.max_size = max_size
        self.sample_style = sample_style

    def get_transform(self, height: int, width: int) -> Transform | None:
        if self.sample_style == "range":
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return None
        new_h, new_w = resized_shape(height, width, int(size), self.max_size)
        return ResizeTransform(height, width, new_h, new_w)


class RandomCrop(Augmentation):
    """Crop a random window (detectron2 ``RandomCrop``; the position ignores the objects).

    Args:
        crop_type: ``"relative"`` (fraction ``crop_size`` of h, w), ``"relative_range"``
            (uniform in ``[crop_size, 1]``), ``"absolute"`` (pixels, capped by the image), or
            ``"absolute_range"`` (crop h and w uniform in ``[min(h, lo), min(h, hi)]``; DiffusionDet
            uses ``(384, 600)``).
        crop_size: two numbers whose meaning depends on ``crop_type``.
    """

    _TYPES = ("relative", "relative_range", "absolute", "absolute_range")

    def __init__(self, *, crop_type: str, crop_size: Sequence[float]) -> None:
        if crop_type not in self._TYPES:
            raise ValueError(f"crop_type must be one of {self._TYPES}, got {crop_type!r}")
        if len(crop_size) != 2:
            raise ValueError(f"crop_size must have 2 values, got {crop_size}")
        if crop_type == "absolute_range" and crop_size[0] > crop_size[1]:
            raise ValueError(f"absolute_range crop_size must be (min, max), got {crop_size}")
        self.crop_type = crop_type
        self.crop_size = tuple(crop_size)

    def crop_shape(self, height: int, width: int) -> tuple[int, int]:
        """Sample the crop ``(h, w)`` for an image of size ``(height, width)``."""
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(height * ch + 0.5), int(width * cw + 0.5)
        if self.crop_type == "relative_range":
            lo = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = lo + np.random.rand(2) * (1 - lo)
            return int(height * ch + 0.5), int(width * cw + 0.5)
        if self.crop_type == "absolute":
            return min(int(self.crop_size[0]), height), min(int(self.crop_size[1]), width)
        lo, hi = int(self.crop_size[0]), int(self.crop_size[1])
        ch = np.random.randint(min(height, lo), min(height, hi) + 1)
        cw = np.random.randint(min(width, lo), min(width, hi) + 1)
        return int(ch), int(cw)

    def get_transform(self, height: int, width: int) -> Transform | None:
        ch, cw = self.crop_shape(height, width)
        y0 = np.random.randint(height - ch + 1)
        x0 = np.random.randint(width - cw + 1)
        return CropTransform(int(x0), int(y0), cw, ch)


def apply_augmentations(
    augmentations: Sequence[Augmentation], image: np.ndarray
) -> tuple[np.ndarray, list[Transform]]:
    """Draw and apply each augmentation in turn.

    Args:
        augmentations: applied in order; each sees the output of the previous one.
        image: (H, W, C) uint8.

    Returns:
        ``(image, transforms)``: the augmented image and the transforms drawn, in order, to be
        replayed on the boxes with :func:`transform_boxes`.
    """
    transforms = []
    for aug in augmentations:
        tfm = aug.get_transform(*image.shape[:2])
        if tfm is not None:
            image = tfm.apply_image(image)
            transforms.append(tfm)
    return image, transforms


def transform_boxes(
    boxes: np.ndarray, transforms: Sequence[Transform], *, image_size: tuple[int, int]
) -> np.ndarray:
    """Replay ``transforms`` on boxes and clip them to the output image (detectron2
    ``transform_instance_annotations``).

    Args:
        boxes: (n, 4) absolute xyxy in the input image.
        transforms: from :func:`apply_augmentations`.
        image_size: ``(h, w)`` of the output image.

    Returns:
        (n, 4) float32 absolute xyxy, clipped to the output image (possibly empty boxes).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    for tfm in transforms:
        boxes = tfm.apply_boxes(boxes)
    h, w = image_size
    return np.clip(boxes, 0, np.array([w, h, w, h], dtype=np.float32))


def transform_masks(masks: np.ndarray, transforms: Sequence[Transform]) -> np.ndarray:
    """Replay ``transforms`` on (n, H, W) uint8 instance masks (as :func:`transform_boxes` does
    on boxes): the masks stay aligned with the augmented image."""
    for tfm in transforms:
        masks = tfm.apply_masks(masks)
    return masks


def filter_empty_boxes(boxes: np.ndarray, *, threshold: float = 1e-5) -> np.ndarray:
    """Keep mask of boxes with width and height above ``threshold`` (detectron2
    ``Boxes.nonempty``, used by ``filter_empty_instances``).

    Args:
        boxes: (n, 4) xyxy.

    Returns:
        (n,) bool.
    """
    wh = boxes[:, 2:] - boxes[:, :2]
    return (wh > threshold).all(axis=1)
