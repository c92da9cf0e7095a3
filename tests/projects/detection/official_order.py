"""DiffusionDet's head, matcher and loss in the official computation order: the tests' oracle.

The library computes the same maths in a cheaper order (one matmul for all stages' time
scale/shift, no permute copies, both towers' first layers in one matmul, every stage and image
matched and scored at once, FrozenBN folded into the convolutions). This module is a second,
independent implementation that follows the official code line by line
(github.com/ShoufaChen/DiffusionDet, ``diffusiondet/head.py`` ``RCNNHead.forward`` /
``DynamicConv.forward``, ``diffusiondet/loss.py`` ``SetCriterionDynamicK`` /
``HungarianMatcherDynamicK``) on the library modules' own weights, so a test can compare the two.
It is never imported by the library.

:func:`official_order` switches a whole :class:`~projects.detection.detector.DiffusionDet` to
this order for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import Tensor
from torchvision.ops import (
    box_convert,
    box_iou,
    generalized_box_iou,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from diffvision.modeling.resnet import set_norm_folding
from projects.detection.criterion import get_fed_loss_classes
from projects.detection.head import apply_deltas

OUTSIDE_BOX_AND_CENTER_COST = 100.0
OUTSIDE_PRIOR_COST = 10000.0
ALREADY_MATCHED_COST = 100000.0


# ------------------------------------------------------------------------------------ head
def dynamic_conv(module, pro_features: Tensor, roi_features: Tensor) -> Tensor:
    """``DynamicConv``: pro_features (1, M, D), roi_features (S², M, D) -> (M, D)."""
    features = roi_features.permute(1, 0, 2)  # (M, S², D)
    params = module.dynamic_layer(pro_features).permute(1, 0, 2)  # (M, 1, 2·D·d)
    param1 = params[:, :, : module.num_params].view(-1, module.hidden_dim, module.dim_dynamic)
    param2 = params[:, :, module.num_params :].view(-1, module.dim_dynamic, module.hidden_dim)
    features = torch.relu(module.norm1(torch.bmm(features, param1)))  # (M, S², d)
    features = torch.relu(module.norm2(torch.bmm(features, param2)))  # (M, S², D)
    features = module.out_layer(features.flatten(1))
    return torch.relu(module.norm3(features))


def stage_forward(stage, features, boxes_xyxy, pro_features, pooler, time_emb):
    """``RCNNHead.forward``: pro_features (1, M, D) or None, time_emb (B, T) ->
    logits (B, N, K), boxes (B, N, 4), object features (1, M, D)."""
    b, n = boxes_xyxy.shape[:2]
    d = stage.hidden_dim
    roi = pooler(features, boxes_xyxy)  # (M, D, S, S)
    if pro_features is None:
        pro_features = roi.view(b, n, d, -1).mean(-1)
    roi = roi.view(b * n, d, -1).permute(2, 0, 1)  # (S², M, D)
    pro = pro_features.view(b, n, d).permute(1, 0, 2)  # (N, B, D)
    pro2 = stage.self_attn(pro, pro, value=pro)[0]
    pro = stage.norm1(pro + stage.dropout1(pro2))
    pro = pro.view(n, b, d).permute(1, 0, 2).reshape(1, b * n, d)
    pro2 = dynamic_conv(stage.inst_interact, pro, roi)
    obj = stage.norm2(pro + stage.dropout2(pro2))
    obj2 = stage.linear2(stage.dropout(torch.relu(stage.linear1(obj))))
    obj = stage.norm3(obj + stage.dropout3(obj2))
    fc = obj.transpose(0, 1).reshape(b * n, -1)
    scale_shift = stage.block_time_mlp(time_emb).repeat_interleave(n, dim=0)  # (M, 2D)
    scale, shift = scale_shift.chunk(2, dim=1)
    fc = fc * (scale + 1) + shift
    cls_feat = fc
    for layer in stage.cls_module:
        cls_feat = layer(cls_feat)
    reg_feat = fc
    for layer in stage.reg_module:
        reg_feat = layer(reg_feat)
    boxes = apply_deltas(
        stage.bboxes_delta(reg_feat),
        boxes_xyxy.reshape(-1, 4),
        weights=stage.bbox_weights,
        scale_clamp=stage.scale_clamp,
    )
    return stage.class_logits(cls_feat).view(b, n, -1), boxes.view(b, n, -1), obj


def head_forward(head, features, boxes_xyxy, t):
    """``DynamicHead.forward``: logits (L, B, N, K), boxes (L, B, N, 4)."""
    emb = head.time_mlp[0](t).to(head.time_mlp[1].weight.dtype)
    time_emb = head.time_mlp[1:](emb)
    boxes, pro_features = boxes_xyxy, None
    all_logits, all_boxes = [], []
    for stage in head.head_series:
        logits, pred_boxes, pro_features = stage_forward(
            stage, features, boxes, pro_features, head.box_pooler, time_emb
        )
        all_logits.append(logits)
        all_boxes.append(pred_boxes)
        boxes = pred_boxes.detach()
    if head.deep_supervision:
        return torch.stack(all_logits), torch.stack(all_boxes)
    return all_logits[-1][None], all_boxes[-1][None]


# --------------------------------------------------------------------------------- matcher
def _resolve_conflicts(matching: Tensor, cost: Tensor, *, claimants_only: bool) -> None:
    multi = matching.sum(1) > 1
    if not bool(multi.any()):
        return
    rows = cost[multi]
    if claimants_only:
        rows = rows.masked_fill(~matching[multi], float("inf"))
    best_gt = rows.argmin(1)
    query_ids = multi.nonzero().squeeze(1)
    matching[query_ids] = False
    matching[query_ids, best_gt] = True


def dynamic_k_matching(cost: Tensor, ious: Tensor, ota_k: int) -> tuple[Tensor, Tensor]:
    """One image's dynamic-k assignment, one gt column at a time as the official loop does (with
    the fix-up step resolving conflicts on the current matching)."""
    num_queries, num_gt = cost.shape
    topk_ious = ious.topk(min(ota_k, num_queries), dim=0).values
    dynamic_ks = topk_ious.sum(0).int().clamp(min=1)
    matching = torch.zeros_like(cost, dtype=torch.bool)
    for g in range(num_gt):
        order = cost[:, g].argsort(stable=True)
        matching[order[: int(dynamic_ks[g])], g] = True
    _resolve_conflicts(matching, cost, claimants_only=False)
    while True:
        unmatched_gt = (~matching.any(0)).nonzero().squeeze(1)
        if unmatched_gt.numel() == 0 or bool(matching.any(1).all()):
            break
        cost[matching.any(1)] += ALREADY_MATCHED_COST
        pos = cost[:, unmatched_gt].argmin(0)
        matching[pos, unmatched_gt] = True
        _resolve_conflicts(matching, cost, claimants_only=True)
    selected = matching.any(1)
    return selected, matching[selected].int().argmax(1)


def match(matcher, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
    """``HungarianMatcherDynamicK.forward``: one image at a time."""
    indices = []
    for b, target in enumerate(targets):
        boxes = outputs["pred_boxes"][b]
        gt_xyxy = target["boxes_xyxy"]
        if gt_xyxy.shape[0] == 0:
            indices.append(
                (torch.zeros(len(boxes), dtype=torch.bool), torch.zeros(0, dtype=torch.int64))
            )
            continue
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        gt_cxcywh = box_convert(gt_xyxy, "xyxy", "cxcywh")
        c = centre[:, None, :]
        in_box = ((c > gt_xyxy[None, :, :2]) & (c < gt_xyxy[None, :, 2:])).all(-1)
        radius = matcher.center_radius * gt_cxcywh[None, :, 2:]
        in_center = ((c - gt_cxcywh[None, :, :2]).abs() < radius).all(-1)
        fg_mask = in_box.any(1) | in_center.any(1)
        prob = outputs["pred_logits"][b].sigmoid()
        neg = (1 - matcher.alpha) * prob**matcher.gamma * (-(1 - prob + 1e-8).log())
        pos = matcher.alpha * (1 - prob) ** matcher.gamma * (-(prob + 1e-8).log())
        cost_cls = pos[:, target["labels"]] - neg[:, target["labels"]]
        cost_l1 = torch.cdist(
            boxes / target["image_size_xyxy"], gt_xyxy / target["image_size_xyxy_tgt"], p=1
        )
        cost = (
            matcher.cost_bbox * cost_l1
            + matcher.cost_class * cost_cls
            + matcher.cost_giou * -generalized_box_iou(boxes, gt_xyxy)
            + OUTSIDE_BOX_AND_CENTER_COST * (~(in_box & in_center)).float()
        )
        cost[~fg_mask] += OUTSIDE_PRIOR_COST
        indices.append(dynamic_k_matching(cost, box_iou(boxes, gt_xyxy), matcher.ota_k))
    return indices


# ------------------------------------------------------------------------------- criterion
def stage_losses(criterion, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
    """One stage's unweighted ``loss_ce, loss_bbox, loss_giou`` (one process)."""
    indices = match(criterion.matcher, outputs, targets)
    logits = outputs["pred_logits"]
    batch, num_queries, num_classes = logits.shape
    target_classes = torch.full((batch, num_queries), num_classes, dtype=torch.int64)
    for b, (selected, gt_indices) in enumerate(indices):
        target_classes[b, selected] = targets[b]["labels"][gt_indices]
    target_classes = target_classes.flatten()
    onehot = torch.zeros(batch * num_queries, num_classes + 1, dtype=logits.dtype)
    onehot.scatter_(1, target_classes[:, None], 1)
    loss = sigmoid_focal_loss(
        logits.flatten(0, 1), onehot[:, :num_classes], alpha=criterion.alpha,
        gamma=criterion.gamma, reduction="none",
    )  # fmt: skip
    if criterion.use_fed_loss:
        classes = get_fed_loss_classes(
            target_classes,
            num_fed_loss_classes=criterion.fed_loss_num_classes,
            num_classes=num_classes,
            weight=criterion.fed_loss_cls_weights,
        )
        mask = torch.zeros(num_classes + 1, dtype=loss.dtype)
        mask[classes] = 1
        loss = loss * mask[None, :num_classes]
    num_matched = max(sum(len(g) for _, g in indices), 1)
    src, src_norm, tgt_norm, tgt_abs = [], [], [], []
    for b, (selected, gt_indices) in enumerate(indices):
        boxes = outputs["pred_boxes"][b][selected]
        src.append(boxes)
        src_norm.append(boxes / targets[b]["image_size_xyxy"])
        tgt_norm.append(targets[b]["boxes"][gt_indices])
        tgt_abs.append(targets[b]["boxes_xyxy"][gt_indices])
    src_boxes = torch.cat(src)
    l1 = (torch.cat(src_norm) - box_convert(torch.cat(tgt_norm), "cxcywh", "xyxy")).abs().sum()
    giou = generalized_box_iou_loss(src_boxes, torch.cat(tgt_abs), reduction="sum")
    zero = outputs["pred_boxes"].sum() * 0
    return {
        "loss_ce": loss.sum() / num_matched,
        "loss_bbox": zero + l1 / num_matched,
        "loss_giou": zero + giou / num_matched,
    }


def criterion_forward(criterion, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
    """``SetCriterionDynamicK.forward`` for finite predictions: each stage matched on its own."""
    stages = [("", outputs)]
    if criterion.deep_supervision:
        stages += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
    losses = {}
    for suffix, stage in stages:
        for k, v in stage_losses(criterion, stage, targets).items():
            losses[k + suffix] = v * criterion.weight_dict[k + suffix]
    return losses


# -------------------------------------------------------------------------------- detector
@contextlib.contextmanager
def official_order(model) -> Iterator[None]:
    """Run ``model`` (a DiffusionDet) in the official order inside the block: unfolded norms,
    :func:`head_forward` and (with a criterion) :func:`criterion_forward`."""
    head, criterion = model.head, model.criterion
    set_norm_folding(model.backbone, False)
    head._forward = types.MethodType(head_forward, head)
    if criterion is not None:
        criterion.forward = types.MethodType(criterion_forward, criterion)
    try:
        yield
    finally:
        set_norm_folding(model.backbone, True)
        del head._forward
        if criterion is not None:
            del criterion.forward
