"""Multi-level RoIAlign pooler with detectron2's FPN level rule (``ROIPooler``, ``ROIAlignV2``).

Each box is pooled from one pyramid level (Lin et al., FPN, eq. 1; detectron2
``assign_boxes_to_levels``)::

    level = clamp(floor(k0 + log2(sqrt(area) / s0 + 1e-8)), min_level, max_level)

with canonical size s0 = 224 at canonical level k0 = 4, then ``roi_align(aligned=True,
sampling_ratio=2)`` at the level's scale (reference diffusiondet.md §1.3). torchvision's
``MultiScaleRoIAlign`` is not equivalent (``aligned=False``, scales inferred from padded shapes).

Two guarantees beyond the arithmetic:

- Every level is pooled, even one that receives no box (``roi_align`` on zero rois), so every
  level's feature stays in the autograd graph with a zero gradient, as in detectron2. DDP with
  ``find_unused_parameters=False`` needs this: otherwise the layers that only feed an empty level
  get no gradient on that step and the next step fails.
- Non-finite boxes (a diverged head) never reach ``roi_align``, whose CPU kernel reads out of
  bounds on NaN/inf coordinates (segfault). Such a box is pooled as a dummy zero box and its
  output row is set to NaN, so the divergence still shows up in the losses (and the trainer's
  ``FloatingPointError``) instead of being hidden or crashing the process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

__all__ = ["ROIPooler", "assign_boxes_to_levels"]


def assign_boxes_to_levels(
    boxes_xyxy: Tensor,
    *,
    min_level: int,
    max_level: int,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """Pyramid level index (0-based from ``min_level``) of each box.

    Args:
        boxes_xyxy: (M, 4) absolute boxes in input-image pixels.

    Returns:
        (M,) int64 in [0, max_level - min_level].
    """
    w = boxes_xyxy[:, 2] - boxes_xyxy[:, 0]
    h = boxes_xyxy[:, 3] - boxes_xyxy[:, 1]
    # sqrt of the signed area, as detectron2 Boxes.area(); negative areas give NaN -> clamped low
    box_sizes = torch.sqrt(w * h)
    levels = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size + 1e-8))
    levels = torch.nan_to_num(levels, nan=float(min_level))
    return (levels.clamp(min=min_level, max=max_level) - min_level).to(torch.int64)


class ROIPooler(nn.Module):
    """Pool (B, N, 4) boxes from a list of FPN levels into (B·N, C, S, S) features.

    Args:
        output_size: S (7 in DiffusionDet).
        scales: spatial scale of each level, fine to coarse, e.g. (1/4, 1/8, 1/16, 1/32).
        sampling_ratio: RoIAlign samples per bin side (2).
        canonical_box_size, canonical_level: the FPN level rule's s0 and k0 (224, 4).
    """

    def __init__(
        self,
        *,
        output_size: int = 7,
        scales: Sequence[float] = (1 / 4, 1 / 8, 1 / 16, 1 / 32),
        sampling_ratio: int = 2,
        canonical_box_size: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        levels = [-math.log2(s) for s in scales]
        if any(abs(lv - round(lv)) > 1e-6 for lv in levels):
            raise ValueError(f"pooler scales must be powers of 2, got {tuple(scales)}")
        levels = [round(lv) for lv in levels]
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(f"pooler scales must be consecutive powers of 2, got {tuple(scales)}")
        self.output_size = output_size
        self.scales = tuple(float(s) for s in scales)
        self.sampling_ratio = sampling_ratio
        self.min_level = levels[0]
        self.max_level = levels[-1]
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, features: Sequence[Tensor], boxes_xyxy: Tensor) -> Tensor:
        """Pool each image's boxes.

        Args:
            features: one (B, C, H_l, W_l) tensor per level, fine to coarse.
            boxes_xyxy: (B, N, 4) absolute boxes in input-image pixels.

        Returns:
            (B·N, C, S, S), image-major (row b·N + i is box i of image b). Rows of boxes with a
            NaN/inf coordinate are NaN.
        """
        if len(features) != len(self.scales):
            raise ValueError(
                f"pooler got {len(features)} feature levels, expects {len(self.scales)}"
            )
        b, n, _ = boxes_xyxy.shape
        x0 = features[0]
        boxes = boxes_xyxy.reshape(b * n, 4).to(x0.dtype)
        # (B·N, 1); torch.where instead of a data-dependent branch: no host sync on accelerators
        finite = torch.isfinite(boxes).all(dim=1, keepdim=True)
        boxes = torch.where(finite, boxes, torch.zeros_like(boxes))
        batch_idx = torch.arange(b, device=boxes.device, dtype=boxes.dtype).repeat_interleave(n)
        rois = torch.cat([batch_idx[:, None], boxes], dim=1)  # (B·N, 5)
        s = self.output_size
        if len(features) == 1:
            out = roi_align(x0, rois, s, self.scales[0], self.sampling_ratio, aligned=True)
            return self._poison(out, finite)
        level_idx = assign_boxes_to_levels(
            boxes,
            min_level=self.min_level,
            max_level=self.max_level,
            canonical_box_size=self.canonical_box_size,
            canonical_level=self.canonical_level,
        )
        out = x0.new_empty(b * n, x0.shape[1], s, s)  # every row is written: one level per box
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            # an empty level still runs (zero rois): its feature stays in the graph
            inds = torch.nonzero(level_idx == level).squeeze(1)
            pooled = roi_align(feature, rois[inds], s, scale, self.sampling_ratio, aligned=True)
            out.index_copy_(0, inds, pooled)
        return self._poison(out, finite)

    @staticmethod
    def _poison(out: Tensor, finite: Tensor) -> Tensor:
        """Set the rows of non-finite boxes to NaN. out: (M, C, S, S); finite: (M, 1) bool."""
        # in place on the fresh pooled tensor: no second (M, C, S, S) allocation
        return out.masked_fill_(~finite[:, :, None, None], float("nan"))
