"""DiffusionInst: instance segmentation from denoised boxes.

Gu et al., "DiffusionInst: Diffusion Model for Instance Segmentation" (arXiv:2212.02773);
official code github.com/chenhaoxing/DiffusionInst ``diffusioninst/detector.py``. DiffusionDet
(box diffusion, six cascaded stages, dynamic-k matching) plus the mask parts of
:mod:`.head`: every denoised box carries the filters of a small dynamic mask head that runs on
one mask-feature map per image.

- Training: DiffusionDet's losses, plus the Dice loss of each matched box's mask
  (:mod:`.criterion`).
- Inference: DiffusionDet's sampler; each candidate (top-N over boxes x classes of a step) keeps
  its box's last-stage parameters, the ensemble pools them with the boxes, NMS picks the kept
  ones, and only those masks are computed (:meth:`DiffusionInst.finalize`).
- Postprocessing (the official code's own, not detectron2's): stride-4 probabilities upsampled
  x4 with :func:`~.head.aligned_bilinear`, cropped to the unpadded input, resized bilinearly
  (``align_corners=False``) to the original size, thresholded at 0.5, and zeroed outside the box
  (rows ``int(y1) .. int(y2) - 1``, columns ``int(x1) .. int(x2) - 1`` of the rescaled, clipped
  box).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from projects.detection.detector import DiffusionDet

from .criterion import sample_gt_masks
from .head import MASK_STRIDE, DiffusionInstHead, aligned_bilinear, dynamic_mask_logits

__all__ = ["MASK_THRESHOLD", "DiffusionInst", "postprocess_masks"]

MASK_THRESHOLD = 0.5


def postprocess_masks(
    probs: Tensor,
    boxes: Tensor,
    input_size: tuple[int, int],
    output_size: tuple[int, int],
) -> Tensor:
    """Stride-4 mask probabilities -> bool masks at the original image size.

    Args:
        probs: (K, h_f, w_f) sigmoid probabilities on the padded input's stride-4 grid.
        boxes: (K, 4) xyxy in output pixels (rescaled and clipped).
        input_size: (h, w) of the unpadded network input.
        output_size: (H, W) of the original image.

    Returns:
        (K, H, W) bool: probability > 0.5 inside the box's integer-truncated rows and columns.
    """
    out_h, out_w = int(output_size[0]), int(output_size[1])
    if probs.shape[0] == 0:
        return torch.zeros(0, out_h, out_w, dtype=torch.bool, device=probs.device)
    x = aligned_bilinear(probs[:, None].float(), MASK_STRIDE)
    x = x[..., : input_size[0], : input_size[1]]
    x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)[:, 0]
    masks = x > MASK_THRESHOLD
    b = boxes.trunc().long()
    rows = torch.arange(out_h, device=masks.device)
    cols = torch.arange(out_w, device=masks.device)
    inside_r = (rows[None] >= b[:, 1:2]) & (rows[None] < b[:, 3:4])  # (K, H)
    inside_c = (cols[None] >= b[:, 0:1]) & (cols[None] < b[:, 2:3])  # (K, W)
    return masks & inside_r[:, :, None] & inside_c[:, None, :]


class DiffusionInst(DiffusionDet):
    """DiffusionDet with a mask per detection (same constructor; ``head`` must be a
    :class:`~.head.DiffusionInstHead`).

    ``predict``/``inference``/``forward`` take and return what DiffusionDet's do, with
    ``"masks"`` (K, H, W) bool at the original image size added to each result. Training
    inputs' ``instances`` also carry ``gt_masks`` (n, H, W) bool at the augmented image size and
    optionally ``gt_mask_valid`` (n,) bool.
    """

    head: DiffusionInstHead

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(self.head, DiffusionInstHead):
            raise TypeError(f"DiffusionInst needs a DiffusionInstHead, got {type(self.head)}")
        self._candidate_params: list[Tensor] = []

    def _running_head(self) -> DiffusionInstHead:
        """The head inference runs: the float32 one, or its reduced-precision copy
        (``TEST.PRECISION``), whose calls record the mask parameters."""
        return self.inference_modules()[1]

    # ------------------------------------------------------------------ training
    def losses(self, batched_inputs: Sequence[dict]) -> dict[str, Tensor]:
        """DiffusionDet's training forward plus the mask inputs of the criterion."""
        if self.criterion is None:
            raise RuntimeError("this DiffusionInst was built without a criterion: cannot train")
        images, images_whwh = self.preprocess_image(batched_inputs)
        features = self.extract_features(images)
        targets, x_boxes, t = self.prepare_targets(batched_inputs, images_whwh)
        x_boxes = x_boxes * images_whwh[:, None, :]
        logits, boxes = self.head(features, x_boxes, t)  # (L, B, N, K), (L, B, N, 4)
        params = self.head.mask_params  # (L_all, B, N, 153)
        mask_feat = self.head.mask_features(features)  # (B, 8, h_f, w_f)
        feat_size = tuple(mask_feat.shape[-2:])
        for x, target in zip(batched_inputs, targets, strict=True):
            inst = x["instances"]
            gt = inst.get("gt_masks")
            if gt is None:
                raise ValueError("DiffusionInst training inputs need instances['gt_masks']")
            gt = torch.as_tensor(gt, device=self.device)
            if gt.shape[0] != len(target["labels"]):
                raise ValueError(
                    f"{gt.shape[0]} gt_masks for {len(target['labels'])} gt_boxes in one image"
                )
            target["masks"] = sample_gt_masks(gt, feat_size)
            valid = inst.get("gt_mask_valid")
            target["mask_valid"] = (
                torch.ones(gt.shape[0], dtype=torch.bool, device=self.device)
                if valid is None
                else torch.as_tensor(valid, dtype=torch.bool, device=self.device)
            )
        first = params.shape[0] - logits.shape[0]  # stages without box outputs (no deep sup.)
        outputs = {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "pred_mask_params": params[-1],
            "mask_feat": mask_feat,
            "aux_outputs": [
                {"pred_logits": a, "pred_boxes": b, "pred_mask_params": p}
                for a, b, p in zip(logits[:-1], boxes[:-1], params[first:-1], strict=True)
            ],
        }
        return self.criterion(outputs, targets)

    # ---------------------------------------------------------------- inference
    def _topk(self, logits: Tensor, boxes: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """DiffusionDet's top-k over boxes x classes; also keeps each pick's mask parameters
        (from the head call that produced ``logits``) for :meth:`finalize`."""
        scores = logits.sigmoid().flatten(1)
        k = min(k, scores.shape[1])
        top_scores, idx = scores.topk(k, dim=1, sorted=True)
        box_idx = idx // self.num_classes
        params = self._running_head().mask_params[-1].float()  # (B, N, 153)
        self._candidate_params.append(
            params.gather(1, box_idx[..., None].expand(-1, -1, params.shape[-1]))
        )
        top_boxes = boxes.gather(1, box_idx[..., None].expand(-1, -1, 4))
        return top_boxes, top_scores, idx % self.num_classes

    def sample_boxes(self, features, images_whwh, x_T, *, steps, draws):
        """DiffusionDet's sampler; returns ``(boxes, scores, labels, mask_params)``, the last
        (B, M, 153) aligned with the candidates (concatenated in :meth:`_topk` call order, which
        is the sampler's candidate order)."""
        self._candidate_params = []
        try:
            boxes, scores, labels = super().sample_boxes(
                features, images_whwh, x_T, steps=steps, draws=draws
            )
            params = torch.cat(self._candidate_params, dim=1)
        finally:
            self._candidate_params = []
        return boxes, scores, labels, params

    #: extra outputs of the exported graph (:mod:`projects.detection.export`)
    graph_output_names = ("mask_probs",)

    def graph_outputs(self, features: Sequence[Tensor], extras: list[Tensor]) -> tuple[Tensor]:
        """The exported graph's ``mask_probs`` (K, h_f, w_f): sigmoid mask probabilities on the
        padded image's stride-4 grid for the K kept detections (``extras`` = their (K, 153)
        parameters), what :func:`postprocess_masks` takes."""
        mask_feat = self._running_head().mask_features(features)[0]
        return (dynamic_mask_logits(mask_feat, extras[0]).sigmoid(),)

    def finalize(
        self, batched_inputs: Sequence[dict], features: Sequence[Tensor], candidates: tuple
    ) -> list[dict[str, Tensor]]:
        """NMS, box postprocessing and the masks of the kept candidates (module docstring)."""
        cand_boxes, cand_scores, cand_labels, cand_params = candidates
        mask_feat = self._running_head().mask_features(features)
        results = []
        for i, x in enumerate(batched_inputs):
            b, s, lab, p = cand_boxes[i], cand_scores[i], cand_labels[i], cand_params[i]
            if self.use_nms:
                keep = batched_nms(b, s, lab, self.nms_threshold)
                b, s, lab, p = b[keep], s[keep], lab[keep], p[keep]
            h, w = x["image"].shape[-2:]
            out_size = (x.get("height", h), x.get("width", w))
            # _postprocess drops boxes that are empty after clipping; candidate positions passed
            # in its labels slot come back as the positions it kept
            positions = torch.arange(len(b), device=b.device)
            result = self._postprocess(b, s, positions, (h, w), out_size)
            kept = result["labels"]
            result["labels"] = lab[kept].long()
            probs = dynamic_mask_logits(mask_feat[i], p[kept]).sigmoid()
            result["masks"] = postprocess_masks(probs, result["boxes"], (h, w), out_size)
            results.append(result)
        return results
