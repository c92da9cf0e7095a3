"""SetCriterionDynamicK against closed forms (reference diffusiondet.md §3)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torchvision.ops import box_convert

from projects.detection.criterion import (
    SetCriterionDynamicK,
    get_fed_loss_classes,
    get_fed_loss_cls_weights,
)

W, H = 200, 160
K = 3


def make_target(gt_xyxy: torch.Tensor, labels: list[int]) -> dict:
    whwh = torch.tensor([W, H, W, H], dtype=torch.float32)
    return {
        "labels": torch.tensor(labels, dtype=torch.int64),
        "boxes": box_convert(gt_xyxy / whwh, "xyxy", "cxcywh"),
        "boxes_xyxy": gt_xyxy,
        "image_size_xyxy": whwh,
        "image_size_xyxy_tgt": whwh.repeat(len(gt_xyxy), 1),
        "area": (gt_xyxy[:, 2] - gt_xyxy[:, 0]) * (gt_xyxy[:, 3] - gt_xyxy[:, 1]),
    }


def far_boxes(n: int) -> torch.Tensor:
    # tiny boxes in the bottom-right corner: outside every gt prior used below
    return torch.tensor([[190.0, 150.0, 192.0, 152.0]]).repeat(n, 1)


def outputs_for(boxes: torch.Tensor, logits: torch.Tensor, aux: int = 0) -> dict:
    out = {"pred_logits": logits[None].clone().requires_grad_(), "pred_boxes": boxes[None].clone()}
    out["pred_boxes"].requires_grad_()
    out["aux_outputs"] = [
        {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]} for _ in range(aux)
    ]
    return out


def focal(x: float, positive: bool, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = 1 / (1 + math.exp(-x))
    if positive:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def test_single_match_closed_form():
    gt = torch.tensor([[50.0, 40.0, 100.0, 120.0]])
    shifted = gt + torch.tensor([10.0, 0.0, 10.0, 0.0])  # IoU 40/60 -> k = max(1, int(0.67)) = 1
    boxes = torch.cat([shifted, far_boxes(4)])
    logits = torch.zeros(5, K)
    logits[0] = torch.tensor([1.0, -2.0, 0.5])
    crit = SetCriterionDynamicK(num_classes=K, deep_supervision=False)
    losses = crit(outputs_for(boxes, logits), [make_target(gt, [0])])
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou"}
    # L1 on normalised xyxy: x1 and x2 both off by 10/200
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * 2 * 10 / W, rel=1e-5)
    # GIoU of two 50x80 boxes shifted by 10: IoU = 40/60, enclosing box = union -> 1 - 2/3
    assert losses["loss_giou"].item() == pytest.approx(2.0 * (1 - 2 / 3), rel=1e-4)
    expected_ce = focal(1.0, True) + focal(-2.0, False) + focal(0.5, False)
    expected_ce += 4 * 3 * focal(0.0, False)
    assert losses["loss_ce"].item() == pytest.approx(2.0 * expected_ce, rel=1e-5)


def test_normalised_by_matched_queries_not_gts():
    gt = torch.tensor([[50.0, 40.0, 100.0, 120.0]])
    boxes = torch.cat([gt.repeat(5, 1) + 1.0, far_boxes(3)])  # 5 near-perfect boxes: k = 4
    crit = SetCriterionDynamicK(num_classes=K, deep_supervision=False)
    indices = crit.matcher(outputs_for(boxes, torch.zeros(8, K)), [make_target(gt, [1])])
    assert int(indices[0][0].sum()) == 4
    # every matched box has the same L1 (4 px / normalised), so the mean equals one box's
    losses = crit(outputs_for(boxes, torch.zeros(8, K)), [make_target(gt, [1])])
    one_box = (1 / W + 1 / H) * 2
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * one_box, rel=1e-5)


def test_empty_images_give_finite_losses_and_gradients():
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(2, 10, 4, generator=g) * 50
    boxes[..., 2:] += boxes[..., :2] + 1
    logits = torch.randn(2, 10, K, generator=g)
    out = {"pred_logits": logits.requires_grad_(), "pred_boxes": boxes.requires_grad_()}
    out["aux_outputs"] = [{"pred_logits": logits, "pred_boxes": boxes} for _ in range(5)]
    empty = make_target(torch.zeros(0, 4), [])
    crit = SetCriterionDynamicK(num_classes=K)
    losses = crit(out, [empty, empty])
    assert len(losses) == 18
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    # loss_ce = 2 * sum of negative focal terms / 1 (no matched query)
    expected = sum(focal(x, False) for x in logits.detach().flatten().tolist())
    assert losses["loss_ce"].item() == pytest.approx(2.0 * expected, rel=1e-5)
    sum(losses.values()).backward()
    assert boxes.grad is not None and logits.grad is not None


def test_mixed_batch_and_aux_weights():
    gt = torch.tensor([[20.0, 20.0, 80.0, 90.0], [120.0, 30.0, 180.0, 100.0]])
    g = torch.Generator().manual_seed(1)
    boxes = torch.cat([gt + torch.randn(2, 4, generator=g), far_boxes(6)])
    out = outputs_for(boxes, torch.randn(8, K, generator=g), aux=5)
    targets = [make_target(gt, [0, 2])]
    crit = SetCriterionDynamicK(num_classes=K)
    losses = crit(out, targets)
    [base] = crit.stage_losses([out], targets)
    for i in range(5):
        for name, weight in (("loss_ce", 2.0), ("loss_bbox", 5.0), ("loss_giou", 2.0)):
            assert losses[f"{name}_{i}"].item() == pytest.approx(weight * base[name].item())


def test_non_finite_box_gives_nan_losses_of_its_stage_only():
    finite = far_boxes(5)
    diverged = torch.cat([torch.tensor([[0.0, 0.0, float("nan"), 10.0]]), far_boxes(4)])
    out = outputs_for(diverged, torch.zeros(5, K), aux=1)
    out["aux_outputs"][0]["pred_boxes"] = finite[None]
    crit = SetCriterionDynamicK(num_classes=K)
    losses = crit(out, [make_target(torch.tensor([[1.0, 1.0, 30.0, 40.0]]), [1])])
    assert {k for k, v in losses.items() if torch.isnan(v)} == {"loss_ce", "loss_bbox", "loss_giou"}
    assert all(torch.isfinite(losses[k]) for k in ("loss_ce_0", "loss_bbox_0", "loss_giou_0"))


def test_fed_loss_buffer_and_mask():
    assert "fed_loss_cls_weights" not in SetCriterionDynamicK(num_classes=K).state_dict()
    num_classes = 60
    weights = torch.ones(num_classes)
    crit = SetCriterionDynamicK(
        num_classes=num_classes,
        use_fed_loss=True,
        fed_loss_cls_weights=weights,
        deep_supervision=False,
    )
    assert list(crit.state_dict()) == ["fed_loss_cls_weights"]
    gt = torch.tensor([[50.0, 40.0, 100.0, 120.0]])
    boxes = torch.cat([gt, far_boxes(4)])
    torch.manual_seed(0)
    fed = crit(outputs_for(boxes, torch.zeros(5, num_classes)), [make_target(gt, [7])])
    full = SetCriterionDynamicK(num_classes=num_classes, deep_supervision=False)(
        outputs_for(boxes, torch.zeros(5, num_classes)), [make_target(gt, [7])]
    )
    # all logits 0: every (query, class) term equals a negative term except the positive one;
    # the federated loss keeps 49 of 60 classes (50 slots, background takes one).
    neg, pos = focal(0.0, False), focal(0.0, True)
    assert full["loss_ce"].item() == pytest.approx(2.0 * (5 * 60 * neg - neg + pos), rel=1e-5)
    assert fed["loss_ce"].item() == pytest.approx(2.0 * (5 * 49 * neg - neg + pos), rel=1e-5)


def test_fed_loss_classes_few_classes_and_background():
    gt_classes = torch.tensor([0, 3, 3, 3])  # class 0 and background (K = 3)
    classes = get_fed_loss_classes(
        gt_classes, num_fed_loss_classes=50, num_classes=3, weight=torch.ones(3)
    )
    assert sorted(classes.tolist()) == [0, 1, 2, 3]  # fewer classes than slots: no error


def test_fed_loss_weights_from_lvis_json_and_dicts(tmp_path):
    data = {"categories": [{"id": 2, "image_count": 16}, {"id": 1, "image_count": 4}]}
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(data))
    assert get_fed_loss_cls_weights(path).tolist() == [2.0, 4.0]  # sqrt, sorted by id
    dicts = [
        {"annotations": [{"category_id": 0}, {"category_id": 0}]},
        {"annotations": [{"category_id": 0}, {"category_id": 1}]},
    ]
    assert get_fed_loss_cls_weights(dicts, power=1.0).tolist() == [2.0, 1.0]
