"""DiffusionInst's loss: DiffusionDet's set-prediction loss plus a Dice mask loss on the matched
boxes of every supervised stage.

Official code github.com/chenhaoxing/DiffusionInst ``diffusioninst/loss.py`` and
``diffusioninst/detector.py``:

- matching is DiffusionDet's dynamic-k on class, L1 and GIoU costs; masks take no part in it;
- each matched proposal's mask logits come from its stage's generated parameters run on its
  image's ``mask_feat`` (:func:`~.head.dynamic_mask_logits`); the ground truth is the bitmask
  sampled on the stride-4 grid (:func:`sample_gt_masks`);
- Dice only (Milletari et al. arXiv:1606.04797 eq. 1 with squared terms):
  ``1 - 2 Σ p g / (Σ p² + Σ g² + 1e-5)`` per matched proposal, p = sigmoid(logit), summed and
  divided by the number of matched proposals, times 5 (``MASK_LOSS_WEIGHT``, fixed in the
  official code: no config key). Keys ``loss_masks`` and, with deep supervision,
  ``loss_masks_0`` .. ``loss_masks_{L-2}`` (the official loop computes them for every stage).

Differences: the normaliser is the matched count averaged over processes (as for the box terms
here), and a ground truth without a usable mask (``mask_valid`` False: an empty or unusable
segmentation in the data) is left out of the mask term and its count instead of training on an
empty mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from projects.detection.criterion import SetCriterionDynamicK, matched_normalisers

from .head import MASK_STRIDE, dynamic_mask_logits

__all__ = ["MASK_LOSS_WEIGHT", "SetCriterionWithMasks", "dice_loss", "sample_gt_masks"]

MASK_LOSS_WEIGHT = 5.0
DICE_EPS = 1e-5


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-instance Dice loss: (K, H, W) logits and {0, 1} targets -> (K,)."""
    p = logits.sigmoid().flatten(1)
    g = targets.to(p.dtype).flatten(1)
    return 1 - 2 * (p * g).sum(1) / ((p * p).sum(1) + (g * g).sum(1) + DICE_EPS)


def sample_gt_masks(masks: Tensor, feat_size: tuple[int, int]) -> Tensor:
    """Ground-truth bitmasks on the stride-4 grid of ``mask_feat``.

    The official code zero-pads the (n, H, W) masks at the right and bottom to 4x the feature
    size and keeps every 4th pixel from offset 2 (the pixel :func:`~.head.aligned_bilinear`
    puts on a feature cell), binarised at 0.5; the same without materialising the padding.

    Returns:
        (n, h_f, w_f) float32 in {0, 1}.
    """
    n = masks.shape[0]
    out = masks.new_zeros((n, *feat_size), dtype=torch.float32)
    offset = MASK_STRIDE // 2
    sub = masks[:, offset::MASK_STRIDE, offset::MASK_STRIDE][:, : feat_size[0], : feat_size[1]]
    out[:, : sub.shape[1], : sub.shape[2]] = (sub.float() >= 0.5).float()
    return out


class SetCriterionWithMasks(SetCriterionDynamicK):
    """:class:`~projects.detection.criterion.SetCriterionDynamicK` + the mask term.

    Same constructor; ``weight_dict`` gains ``loss_masks`` (and ``loss_masks_{i}``) = 5.

    Extra inputs of :meth:`forward`: ``outputs["mask_feat"]`` (B, 8, h_f, w_f),
    ``outputs["pred_mask_params"]`` (B, N, 153) and the same in each ``aux_outputs`` entry;
    ``targets[b]["masks"]`` (G, h_f, w_f) from :func:`sample_gt_masks` and
    ``targets[b]["mask_valid"]`` (G,) bool.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.weight_dict["loss_masks"] = MASK_LOSS_WEIGHT
        if self.deep_supervision:
            for key in [k for k in self.weight_dict if k.startswith("loss_ce_")]:
                self.weight_dict["loss_masks_" + key[len("loss_ce_") :]] = MASK_LOSS_WEIGHT

    def mask_loss(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> Tensor:
        """Unweighted Dice loss of one stage over its matched proposals (matched again with the
        criterion's deterministic matcher: the same pairs as the box terms)."""
        indices = self.matcher(outputs, targets)
        mask_feat, params = outputs["mask_feat"], outputs["pred_mask_params"]
        total = params.sum() * 0  # keeps a graph when nothing is matched
        count = 0
        for b, (selected, gt_indices) in enumerate(indices):
            valid = targets[b]["mask_valid"][gt_indices]
            if not bool(valid.any()):
                continue
            logits = dynamic_mask_logits(mask_feat[b], params[b][selected][valid])
            gt = targets[b]["masks"][gt_indices[valid]]
            total = total + dice_loss(logits, gt).sum()
            count += int(valid.sum())
        denom = matched_normalisers(torch.tensor([count], device=params.device))[0]
        return total / denom.to(total.dtype)

    def weighted_losses(
        self,
        outputs: dict[str, Any],
        targets: list[dict[str, Tensor]],
        stages: Sequence[tuple[str, dict[str, Any]]],
        finite: Sequence[bool],
    ) -> dict[str, Tensor]:
        """DiffusionDet's weighted losses plus ``loss_masks`` (and ``loss_masks_{i}``)."""
        losses = super().weighted_losses(outputs, targets, stages, finite)
        # the box terms' flags: a stage diverged on any process is skipped on all of them, so
        # every rank makes the same mask-normaliser collectives
        for (suffix, stage), is_finite in zip(stages, finite, strict=True):
            if not is_finite:  # its box terms are NaN already
                losses["loss_masks" + suffix] = stage["pred_mask_params"].sum() * float("nan")
                continue
            stage = {**stage, "mask_feat": outputs["mask_feat"]}
            key = "loss_masks" + suffix
            losses[key] = self.mask_loss(stage, targets) * self.weight_dict[key]
        return losses
