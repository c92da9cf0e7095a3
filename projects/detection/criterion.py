"""DiffusionDet's set-prediction loss with the dynamic-k matcher.

Focal classification loss (alpha 0.25, gamma 2), L1 on normalised xyxy boxes and GIoU, weighted
2 / 5 / 2 on the last head stage and, with deep supervision, on each of the 5 earlier stages, each
stage matched independently. Follows the official ``loss.py``
(github.com/ShoufaChen/DiffusionDet v0.1, ``diffusiondet/loss.py``, ``SetCriterionDynamicK``)
and, for LVIS, detectron2's federated loss (``get_fed_loss_classes``).

Normalisation quirk kept on purpose (as in the official ``loss.py``): every term is divided by the
number of matched *queries* on this process (one-to-many, so usually more than the number of ground
truths), not by the ground-truth count averaged over processes. The released hyper-parameters
were tuned with it.

Differences from the official code:

- A stage with a non-finite predicted box gets NaN losses without matching (NaN costs would
  break the assignment), instead of the bare ``assert`` inside ``generalized_box_iou``
  of the official ``loss.py``; the trainer's ``FloatingPointError`` then names the iteration and
  every loss term, so the diverged stage shows as ``loss_*_{i}=nan``.
- GIoU is computed pairwise on the matched pairs (``generalized_box_iou_loss``) instead of the
  diagonal of an M x M matrix: same value up to its 1e-7 epsilon, linear memory.
- Federated-loss sampling draws at most as many negatives as there are classes with non-zero
  weight (the official ``multinomial`` call fails for fewer than 50 classes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from projects.detection.matcher import HungarianMatcherDynamicK

__all__ = ["SetCriterionDynamicK", "get_fed_loss_classes", "get_fed_loss_cls_weights"]


def get_fed_loss_cls_weights(
    dataset: str | os.PathLike | dict | Sequence[dict[str, Any]], *, power: float = 0.5
) -> Tensor:
    """Per-class federated-loss sampling weights ``image_count ** power`` (detectron2's
    ``get_fed_loss_cls_weights``).

    Args:
        dataset: an LVIS-format json path or its loaded dict (categories carry
            ``image_count``), or detectron2-style dataset dicts (the image count of each
            contiguous class is then counted from the annotations).
        power: exponent (detectron2 ``FED_LOSS_FREQ_WEIGHT_POWER``, 0.5).

    Returns:
        (K,) float32 weights ordered by contiguous class id (category id order for a json).
    """
    if isinstance(dataset, (str, os.PathLike)):
        with open(dataset) as f:
            dataset = json.load(f)
    if isinstance(dataset, dict):
        categories = sorted(dataset["categories"], key=lambda c: c["id"])
        missing = [c["id"] for c in categories if "image_count" not in c]
        if missing:
            raise ValueError(
                f"categories {missing[:5]} have no 'image_count'; federated loss weights need "
                "LVIS-style category metadata (or pass dataset dicts instead)"
            )
        counts = torch.tensor([float(c["image_count"]) for c in categories])
    else:
        num_classes = 1 + max(
            (a["category_id"] for d in dataset for a in d.get("annotations", [])), default=-1
        )
        counts = torch.zeros(num_classes)
        for d in dataset:
            classes = {a["category_id"] for a in d.get("annotations", [])}
            for c in classes:
                counts[c] += 1
    return counts.float() ** power


def get_fed_loss_classes(
    gt_classes: Tensor, *, num_fed_loss_classes: int, num_classes: int, weight: Tensor
) -> Tensor:
    """Classes that take part in the federated loss of one batch (detectron2 ``fast_rcnn``).

    The classes present in ``gt_classes`` (background index ``num_classes`` included, so it takes
    one of the slots, as in the official code) plus negatives sampled without replacement with
    probability proportional to ``weight``, up to ``num_fed_loss_classes`` in total.

    Args:
        gt_classes: (M,) int64 target class per query, ``num_classes`` = background.
        num_fed_loss_classes: total number of classes to keep (official 50).
        num_classes: K.
        weight: (K,) sampling weights.

    Returns:
        (C,) int64 class ids in ``[0, num_classes]``.
    """
    unique = torch.unique(gt_classes)
    if len(unique) >= num_fed_loss_classes:
        return unique
    prob = unique.new_zeros(num_classes + 1, dtype=torch.float)
    prob[:num_classes] = weight.float()
    prob[unique] = 0
    num_samples = min(num_fed_loss_classes - len(unique), int((prob > 0).sum()))
    if num_samples == 0:
        return unique
    sampled = torch.multinomial(prob, num_samples, replacement=False)
    return torch.cat([unique, sampled])


def matched_normalisers(counts: Tensor) -> Tensor:
    """The divisors of losses summed over this process's matched queries, one per stage.

    ``max(count, 1)`` in one process; with W processes the global count over W, so that DDP's
    gradient mean gives the 1-process loss of the same global batch (the official code divides by
    each GPU's own count, which makes the result depend on the process count). Every rank must
    call it (one collective for all stages).

    Args:
        counts: (L,) matched queries per stage on this process.

    Returns:
        (L,) float32 divisors.
    """
    counts = counts.to(torch.float32)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        counts = counts.clone()
        dist.all_reduce(counts)
        counts = counts / dist.get_world_size()
    return counts.clamp(min=1.0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SetCriterionDynamicK(nn.Module):
    """Set-prediction loss of DiffusionDet (official ``diffusiondet/loss.py``).

    Args:
        num_classes: K, number of foreground classes (sigmoid outputs, no background logit).
        class_weight: weight of ``loss_ce`` (official 2.0).
        giou_weight: weight of ``loss_giou`` (2.0).
        l1_weight: weight of ``loss_bbox`` (5.0).
        alpha: focal-loss alpha (0.25).
        gamma: focal-loss gamma (2.0).
        ota_k: top IoUs summed per gt for the matcher's dynamic k (5).
        deep_supervision: also compute the loss on ``aux_outputs``.
        use_focal: sigmoid focal classification loss (the only non-federated mode supported,
            as in the official code).
        use_fed_loss: federated focal loss (LVIS).
        fed_loss_cls_weights: (K,) sampling weights, required with ``use_fed_loss``; stored as
            the buffer ``fed_loss_cls_weights`` (an LVIS checkpoint key). Without fed loss there is
            no buffer, so COCO checkpoints carry no criterion keys.
        fed_loss_num_classes: classes per batch in the federated loss, background included (50).

    Attributes:
        matcher: the :class:`HungarianMatcherDynamicK` used for every stage.
        weight_dict: loss name -> weight, for the 3 main and 15 auxiliary terms.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        class_weight: float = 2.0,
        giou_weight: float = 2.0,
        l1_weight: float = 5.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        ota_k: int = 5,
        deep_supervision: bool = True,
        use_focal: bool = True,
        use_fed_loss: bool = False,
        fed_loss_cls_weights: Tensor | None = None,
        fed_loss_num_classes: int = 50,
        num_aux_stages: int = 5,
    ) -> None:
        super().__init__()
        if not (use_focal or use_fed_loss):
            raise ValueError(
                "SetCriterionDynamicK needs use_focal=True or use_fed_loss=True "
                "(the official softmax path is not implemented either)"
            )
        self.num_classes = num_classes
        self.alpha = alpha
        self.gamma = gamma
        self.deep_supervision = deep_supervision
        self.use_focal = use_focal
        self.use_fed_loss = use_fed_loss
        self.fed_loss_num_classes = fed_loss_num_classes
        if use_fed_loss:
            if fed_loss_cls_weights is None or fed_loss_cls_weights.shape != (num_classes,):
                got = None if fed_loss_cls_weights is None else tuple(fed_loss_cls_weights.shape)
                raise ValueError(
                    f"use_fed_loss needs fed_loss_cls_weights of shape ({num_classes},), got {got}"
                )
            self.register_buffer("fed_loss_cls_weights", fed_loss_cls_weights.float().clone())
        self.matcher = HungarianMatcherDynamicK(
            cost_class=class_weight,
            cost_bbox=l1_weight,
            cost_giou=giou_weight,
            use_focal=use_focal,
            use_fed_loss=use_fed_loss,
            ota_k=ota_k,
            alpha=alpha,
            gamma=gamma,
        )
        base = {"loss_ce": class_weight, "loss_bbox": l1_weight, "loss_giou": giou_weight}
        self.weight_dict = dict(base)
        if deep_supervision:
            for i in range(num_aux_stages):
                self.weight_dict.update({f"{k}_{i}": v for k, v in base.items()})

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, weight_dict={self.weight_dict}"

    def stage_losses(
        self, stages: list[dict[str, Tensor]], targets: list[dict]
    ) -> list[dict[str, Tensor]]:
        """Unweighted losses of every stage, all stages at once: one matcher call, one focal loss.

        The L stages x B images are matched as L·B independent problems by
        :meth:`HungarianMatcherDynamicK.match_batched` (ground truths padded to the largest
        count), as the official code matches each stage separately; the losses are summed per
        stage with ``index_add`` and normalised by each stage's number of matched queries.
        Classification: focal loss over all B·N queries, matched queries
        positive for their gt's class, every other query negative for every class. Boxes
        L1 on normalised xyxy and GIoU on absolute xyxy over the matched queries.

        Args:
            stages: L dicts with ``pred_logits`` (B, N, K) and ``pred_boxes`` (B, N, 4).
            targets: per image, as :meth:`forward`.

        Returns:
            L dicts of unweighted ``loss_ce, loss_bbox, loss_giou``, in ``stages`` order.
        """
        logits = torch.stack([st["pred_logits"] for st in stages])  # (L, B, N, K)
        boxes = torch.stack([st["pred_boxes"] for st in stages])  # (L, B, N, 4)
        num_stages, batch, num_queries, num_classes = logits.shape
        device = logits.device
        max_gt = max(len(t["labels"]) for t in targets)
        gt_labels = torch.zeros(batch, max_gt, dtype=torch.int64, device=device)
        gt_xyxy = boxes.new_zeros(batch, max_gt, 4)
        gt_cxcywh = boxes.new_zeros(batch, max_gt, 4)
        gt_valid = torch.zeros(batch, max_gt, dtype=torch.bool, device=device)
        for b, t in enumerate(targets):  # copies only: G_b rows each
            g = len(t["labels"])
            gt_labels[b, :g] = t["labels"]
            gt_xyxy[b, :g] = t["boxes_xyxy"]
            gt_cxcywh[b, :g] = t["boxes"]
            gt_valid[b, :g] = True
        whwh = torch.stack([t["image_size_xyxy"] for t in targets]).to(boxes.dtype)  # (B, 4)

        def tile(x: Tensor) -> Tensor:  # (B, ...) -> (L·B, ...), stage-major
            return x[None].expand(num_stages, *x.shape).flatten(0, 1)

        flat_logits, flat_boxes = logits.flatten(0, 1), boxes.flatten(0, 1)  # (P, N, .)
        matching = self.matcher.match_batched(
            flat_logits.detach(),
            flat_boxes.detach(),
            gt_labels=tile(gt_labels),
            gt_boxes_xyxy=tile(gt_xyxy),
            gt_valid=tile(gt_valid),
            image_whwh=tile(whwh),
        )  # (P, N, G)
        selected = matching.any(-1)  # (P, N)
        gt_index = matching.int().argmax(-1) if max_gt else selected.long()  # (P, N)
        num_matched = selected.view(num_stages, -1).sum(1)  # (L,)
        denom = matched_normalisers(num_matched).to(logits.dtype)  # global mean over processes

        # classification: every query of every stage in one focal loss
        labels = tile(gt_labels).gather(1, gt_index) if max_gt else gt_index
        target_classes = torch.where(selected, labels, num_classes)  # (P, N)
        onehot = nn.functional.one_hot(target_classes, num_classes + 1)[..., :num_classes]
        focal = sigmoid_focal_loss(
            flat_logits, onehot.to(logits.dtype), alpha=self.alpha, gamma=self.gamma,
            reduction="none",
        )  # fmt: skip
        focal = focal.view(num_stages, batch * num_queries, num_classes)
        if self.use_fed_loss:  # per stage, in the plain order (the class draws use torch's RNG)
            masks = []
            for stage_classes in target_classes.view(num_stages, -1):
                classes = get_fed_loss_classes(
                    stage_classes,
                    num_fed_loss_classes=self.fed_loss_num_classes,
                    num_classes=num_classes,
                    weight=self.fed_loss_cls_weights,
                )
                mask = focal.new_zeros(num_classes + 1)
                mask[classes] = 1
                masks.append(mask[:num_classes])
            focal = focal * torch.stack(masks)[:, None, :]
        loss_ce = focal.sum((1, 2)) / denom

        # boxes: the matched pairs of all stages
        prob_idx, query_idx = selected.nonzero(as_tuple=True)  # (M,)
        gt_idx = gt_index[prob_idx, query_idx]
        image_idx = prob_idx % batch
        src = flat_boxes[prob_idx, query_idx]  # (M, 4)
        tgt_norm = box_convert(gt_cxcywh[image_idx, gt_idx], "cxcywh", "xyxy")
        l1 = (src / whwh[image_idx] - tgt_norm).abs().sum(-1)
        giou = generalized_box_iou_loss(src, gt_xyxy[image_idx, gt_idx], reduction="none")
        stage_idx = prob_idx // batch
        zero = boxes.sum() * 0  # keeps a graph (and a gradient of zeros) when nothing is matched
        loss_bbox = (zero + boxes.new_zeros(num_stages).index_add(0, stage_idx, l1)) / denom
        loss_giou = (zero + boxes.new_zeros(num_stages).index_add(0, stage_idx, giou)) / denom
        return [
            {"loss_ce": loss_ce[i], "loss_bbox": loss_bbox[i], "loss_giou": loss_giou[i]}
            for i in range(num_stages)
        ]

    # ---------------------------------------------------------------------------------------

    def supervised_stages(self, outputs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """``(suffix, stage outputs)`` of every supervised stage: the last (suffix ``""``) and,
        with deep supervision, aux stage i (suffix ``"_{i}"``)."""
        stages = [("", outputs)]
        if self.deep_supervision:
            stages += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        return stages

    @staticmethod
    def finite_stages(stages: Sequence[tuple[str, dict[str, Any]]]) -> list[bool]:
        """Per stage: are its predicted boxes finite on every process. A stage is matched and
        normalised (a collective) only where this is True, so every rank must skip the same
        stages; a subclass adding collective terms per stage gets the same flags in
        :meth:`weighted_losses`."""
        finite = torch.stack([torch.isfinite(st["pred_boxes"]).all() for _, st in stages])
        if _distributed():
            finite = finite.to(torch.int32)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return finite.bool().tolist()  # one host sync for all stages

    def forward(
        self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Weighted losses of the last stage and (with deep supervision) the 5 earlier ones.

        Args:
            outputs: ``pred_logits`` (B, N, K), ``pred_boxes`` (B, N, 4) absolute xyxy in
                resized-image pixels, and ``aux_outputs``: a list of such dicts for stages 0..4.
            targets: per image (official ``prepare_targets``): ``labels`` (G,)
                int64, ``boxes`` (G, 4) normalised cxcywh, ``boxes_xyxy`` (G, 4) absolute,
                ``image_size_xyxy`` (4,), ``image_size_xyxy_tgt`` (G, 4). G may be 0.

        Returns:
            ``loss_ce, loss_bbox, loss_giou`` and ``loss_ce_{i}, loss_bbox_{i}, loss_giou_{i}``
            for aux stage i, each already multiplied by its weight.

        A stage whose predicted boxes hold a NaN or infinite value gets NaN losses (unmatched).
        """
        stages = self.supervised_stages(outputs)
        return self.weighted_losses(outputs, targets, stages, self.finite_stages(stages))

    def weighted_losses(
        self,
        outputs: dict[str, Any],
        targets: list[dict[str, Tensor]],
        stages: Sequence[tuple[str, dict[str, Any]]],
        finite: Sequence[bool],
    ) -> dict[str, Tensor]:
        """:meth:`forward`'s losses for ``stages`` (:meth:`supervised_stages`) given their
        :meth:`finite_stages` flags, computed once per step: a subclass adding terms per stage
        extends this, so it reuses the flags (and their collective) instead of deciding again."""
        ok = [st for (_, st), f in zip(stages, finite, strict=True) if f]
        per_stage = self.stage_losses(ok, targets) if ok else []
        computed = iter(per_stage)
        losses = {}
        for (suffix, stage), is_finite in zip(stages, finite, strict=True):
            if not is_finite:
                # NaN losses (graph and device kept): the trainer's finiteness check then
                # stops the run naming the iteration and the diverged terms
                nan = stage["pred_boxes"].sum() * float("nan")
                for k in ("loss_ce", "loss_bbox", "loss_giou"):
                    losses[k + suffix] = nan
                continue
            for k, v in next(computed).items():
                losses[k + suffix] = v * self.weight_dict[k + suffix]
        return losses
