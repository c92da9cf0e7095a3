"""Turn a detection dataset dict into a model input (DiffusionDet's ``DiffusionDetDatasetMapper``).

Output, per image (detectron2's batch layout)::

    {"image": uint8 tensor (3, H, W) RGB, augmented/resized,
     "height", "width": ORIGINAL image size (for rescaling predictions),
     "image_id", "file_name",
     "instances": {"gt_boxes": float32 (n, 4) xyxy in resized pixels, "gt_classes": int64 (n,)}}

With ``masks=True`` the instances also hold ``gt_masks`` (n, H, W) bool at the augmented image
size (each annotation's ``segmentation`` decoded at the original size and put through the same
transforms as the image) and ``gt_mask_valid`` (n,) bool (False for an annotation without a
usable segmentation: its mask is all False and no mask loss uses it).

``instances`` only in training. Crowd boxes are dropped and boxes that are empty after
clipping (width or height <= 1e-5) are removed, so ``n`` may be 0 (as in DiffusionDet's
``diffusiondet/dataset_mapper.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffvision.data.coco import decode_segmentation
from diffvision.data.detection_transforms import (
    Augmentation,
    apply_augmentations,
    filter_empty_boxes,
    transform_boxes,
    transform_masks,
)
from diffvision.data.image_io import read_image_rgb
from diffvision.errors import DataError

__all__ = ["DetectionDatasetMapper"]


class DetectionDatasetMapper:
    """Read, augment and convert one dataset dict.

    Args:
        augmentations: applied in order (test: just the resize).
        crop_augmentations: optional alternative pipeline (DiffusionDet's crop branch); chosen
            instead of ``augmentations`` with probability ``crop_prob`` per image.
        crop_prob: probability of the crop branch (official 0.5).
        is_train: keep annotations as ``instances``.
        masks: also map the annotations' segmentations (see the module docstring).
    """

    def __init__(
        self,
        *,
        augmentations: Sequence[Augmentation],
        crop_augmentations: Sequence[Augmentation] | None = None,
        crop_prob: float = 0.5,
        is_train: bool,
        masks: bool = False,
    ) -> None:
        self.masks = masks
        self.augmentations = list(augmentations)
        self.crop_augmentations = None if crop_augmentations is None else list(crop_augmentations)
        self.crop_prob = crop_prob
        self.is_train = is_train

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        """Map one dataset dict (not modified) to a model input dict.

        Raises:
            FileNotFoundError, OSError: the image is missing or unreadable (the path is named).
            ValueError: the image size differs from the annotation's ``height``/``width``.
        """
        image = read_image_rgb(dataset_dict["file_name"])
        height = dataset_dict.get("height", image.shape[0])
        width = dataset_dict.get("width", image.shape[1])
        if image.shape[:2] != (height, width):
            raise DataError(
                f"image {dataset_dict['file_name']} is {image.shape[1]}x{image.shape[0]} (WxH) but "
                f"its annotation says {width}x{height}"
            )
        augs = self.augmentations
        # Official: `np.random.rand() > 0.5` keeps the plain pipeline.
        if self.crop_augmentations is not None and np.random.rand() < self.crop_prob:
            augs = self.crop_augmentations
        image, transforms = apply_augmentations(augs, image)
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": height,
            "width": width,
            "image_id": dataset_dict.get("image_id"),
            "file_name": dataset_dict["file_name"],
        }
        if self.is_train:
            anns = [a for a in dataset_dict.get("annotations", []) if not a.get("iscrowd", 0)]
            boxes = transform_boxes(
                np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4),
                transforms,
                image_size=image.shape[:2],
            )
            classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
            keep = filter_empty_boxes(boxes)
            out["instances"] = {
                "gt_boxes": torch.from_numpy(boxes[keep]),
                "gt_classes": torch.from_numpy(classes[keep]),
            }
            if self.masks:
                masks, valid = self._masks(anns, height, width, transforms, image.shape[:2])
                out["instances"]["gt_masks"] = torch.from_numpy(masks[keep].astype(bool))
                out["instances"]["gt_mask_valid"] = torch.from_numpy(valid[keep])
        return out

    @staticmethod
    def _masks(
        anns: list[dict[str, Any]],
        height: int,
        width: int,
        transforms: list,
        out_size: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, H', W') uint8 augmented masks and (n,) bool validity of ``anns``."""
        decoded = [decode_segmentation(a.get("segmentation"), height, width) for a in anns]
        masks = np.zeros((len(anns), height, width), dtype=np.uint8)
        for i, m in enumerate(decoded):
            if m is not None:
                masks[i] = m
        masks = transform_masks(masks, transforms)
        if masks.shape[1:] != tuple(out_size):
            raise DataError(f"masks are {masks.shape[1:]} after augmentation, image {out_size}")
        # a mask that is empty (or cropped away) while its box is not gives the loss nothing
        valid = masks.any(axis=(1, 2))
        return masks, valid
