"""Test-time augmentation for DiffusionDet: several resizes (and flips) of each image, one batch.

detectron2's ``GeneralizedRCNNWithTTA`` recipe with its keys (``TEST.AUG.ENABLED``,
``MIN_SIZES``, ``MAX_SIZE``, ``FLIP``): every image is resized so that its short edge is each of
``min_sizes`` (long edge at most ``max_size``), optionally also flipped horizontally; all
augmented copies of one image run through :meth:`DiffusionDet.inference` as one batch, their
boxes are mapped back to the original image (un-flipped) and merged by class-aware NMS.

Why NMS and not weighted box fusion: NMS is what DiffusionDet already uses to merge its own
step ensemble (same threshold, ``MODEL.DiffusionDet.NMS_THRESH``) and what detectron2's TTA does;
it adds no hyper-parameter and keeps each kept box an actual prediction, so a TTA result with
one augmentation equals the plain result. The official DiffusionDet TTA
(``DiffusionDetWithTTA`` in ``diffusiondet/test_time_augmentation.py``) cannot run as shipped;
this is a rewrite, not a port.

Randomness: copy 0 of an image with seed s draws from s (so one un-flipped copy at the test size
is exactly the plain result), copy k > 0 from ``(s · 1_000_003 + k) mod 2^62``: results depend
only on (SEED, image id, k).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms

from diffvision.data.detection_transforms import ResizeTransform, resized_shape
from diffvision.data.image_io import read_image_rgb
from diffvision.errors import ConfigError

from .detector import DiffusionDet

__all__ = ["DetectorWithTTA", "build_tta"]


class DetectorWithTTA:
    """Run a :class:`DiffusionDet` over resized / flipped copies of each image and merge.

    Args:
        model: the detector.
        min_sizes: short-edge lengths of the copies (detectron2 ``TEST.AUG.MIN_SIZES``).
        max_size: cap of the long edge (``TEST.AUG.MAX_SIZE``).
        flip: also run each size flipped horizontally (``TEST.AUG.FLIP``).
        nms_threshold: IoU of the class-aware NMS that merges the copies (default: the model's
            ``nms_threshold``).
    """

    def __init__(
        self,
        model: DiffusionDet,
        *,
        min_sizes: Sequence[int],
        max_size: int,
        flip: bool,
        nms_threshold: float | None = None,
    ) -> None:
        sizes = [int(s) for s in min_sizes]
        if not sizes or min(sizes) < 1 or max_size < max(sizes):
            raise ConfigError(
                f"TEST.AUG.MIN_SIZES {tuple(min_sizes)} must be positive sizes <= "
                f"TEST.AUG.MAX_SIZE {max_size}"
            )
        self.model = model
        self.min_sizes = sizes
        self.max_size = int(max_size)
        self.flip = bool(flip)
        self.nms_threshold = model.nms_threshold if nms_threshold is None else nms_threshold

    def augment(self, x: dict) -> list[dict]:
        """The augmented inputs of one image (``file_name`` is read when present, as
        detectron2's TTA mapper does; else the given ``image`` is resized)."""
        if "file_name" in x:
            rgb = read_image_rgb(x["file_name"])
        else:
            rgb = x["image"].permute(1, 2, 0).cpu().numpy()
        height, width = int(x.get("height", rgb.shape[0])), int(x.get("width", rgb.shape[1]))
        copies = []
        for size in self.min_sizes:
            h, w = rgb.shape[:2]
            new_h, new_w = resized_shape(h, w, size, self.max_size)
            img = (
                ResizeTransform(h, w, new_h, new_w).apply_image(rgb)
                if (new_h, new_w) != (h, w)
                else rgb
            )
            for flipped in (False, True) if self.flip else (False,):
                arr = img[:, ::-1] if flipped else img
                tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
                copies.append({"image": tensor, "height": height, "width": width, "flip": flipped})
        return copies

    @torch.no_grad()
    def __call__(
        self, batched_inputs: Sequence[dict], *, seeds: Sequence[int] | None = None
    ) -> list[dict[str, Tensor]]:
        """Detections per image, like :meth:`DiffusionDet.inference` (boxes in original pixels).

        Args:
            batched_inputs: test-loader dicts (``image``, ``height``, ``width``, ``file_name``).
            seeds: one int per image (None: torch's global RNG, like ``inference``).
        """
        results = []
        for i, x in enumerate(batched_inputs):
            copies = self.augment(x)
            copy_seeds = None
            if seeds is not None:
                s = int(seeds[i])
                copy_seeds = [s] + [(s * 1_000_003 + k) % 2**62 for k in range(1, len(copies))]
            outputs = self.model.inference(copies, seeds=copy_seeds)
            width = float(x.get("width", x["image"].shape[-1]))
            boxes, scores, labels = [], [], []
            for copy, out in zip(copies, outputs, strict=True):
                b = out["boxes"]
                if copy["flip"]:
                    b = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
                boxes.append(b)
                scores.append(out["scores"])
                labels.append(out["labels"])
            b, s, lab = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = batched_nms(b, s, lab, self.nms_threshold)
            keep = keep[: max(len(o["scores"]) for o in outputs)]  # as many as one copy gives
            results.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
        return results


def build_tta(cfg, model: DiffusionDet) -> DetectorWithTTA | None:
    """``TEST.AUG.*`` → :class:`DetectorWithTTA`, or None when ``TEST.AUG.ENABLED`` is off.

    The merging NMS uses ``MODEL.ROI_HEADS.NMS_THRESH_TEST`` (detectron2's and the official
    DiffusionDet TTA's key; 0.5 by default, like ``MODEL.DiffusionDet.NMS_THRESH``).
    """
    aug = cfg.TEST.AUG
    if not aug.ENABLED:
        return None
    return DetectorWithTTA(
        model,
        min_sizes=tuple(aug.MIN_SIZES),
        max_size=aug.MAX_SIZE,
        flip=aug.FLIP,
        nms_threshold=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
    )
