"""DiffusionDet computes what the official computation order (``official_order.py``) does.

The library runs the head, matcher and loss in a cheaper order and folds FrozenBN into the
convolutions; ``official_order.py`` is a line-by-line second implementation of the official code on
the same weights. Detections are compared as sets: every detection of one order has a partner in
the other with the
same label, boxes within 1e-3 relative (of max(|coordinate|, 1) px) and score within 1e-4.
The random-weight R50 runs in float64: a random ResNet-50 with FrozenBN has no normalisation, so
in float32 a rounding difference of 1e-7 grows through 50 layers, six head stages and four DDIM
steps until it flips an FPN level assignment or an NMS decision; in float64 the same comparison
checks the maths with rounding out of the way. The toy model (trainable BN, the project's
CPU-trained recipe) is compared in float32, the dtype it is deployed in.
"""

from __future__ import annotations

import pytest
import torch
from official_order import criterion_forward, head_forward, match, official_order
from torchvision.ops import FrozenBatchNorm2d

import projects  # noqa: F401  (registers the task and its config keys)
from diffvision.engine.defaults import load_config
from diffvision.modeling.resnet import ConvNorm
from projects.detection.box_diffusion import diffusion_to_boxes
from projects.detection.build import build_model
from projects.detection.criterion import SetCriterionDynamicK
from projects.detection.matcher import HungarianMatcherDynamicK


def _model(config: str, *, dtype=torch.float32, seed: int = 0):
    cfg = load_config(config, ["MODEL.WEIGHTS", ""])
    torch.manual_seed(seed)
    return build_model(cfg).to(dtype)


def _images(sizes, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)}
            for h, w in sizes]  # fmt: skip


def _randomise_norms(model, images: torch.Tensor) -> None:
    """Give every FrozenBN non-trivial statistics (a trained network's are never identity):
    running mean/var of its input on ``images``, weight in [0.5, 1.5), bias ~ N(0, 0.1²)."""
    g = torch.Generator().manual_seed(3)

    def pre_hook(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))
        module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
        module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)

    hooks = [m.register_forward_pre_hook(pre_hook) for m in model.modules()
             if isinstance(m, FrozenBatchNorm2d)]  # fmt: skip
    with torch.no_grad(), official_order(model):
        model.extract_features(images)
    for h in hooks:
        h.remove()


def assert_same_detections(plain: list[dict], fast: list[dict]) -> None:
    """Every detection of ``plain`` (the official order) has a partner in ``fast``."""
    assert len(plain) == len(fast)
    for image, (a, b) in enumerate(zip(plain, fast, strict=True)):
        assert len(a["scores"]) == len(b["scores"]), f"image {image}: detection counts differ"
        assert len(a["scores"]) > 0
        unused = torch.ones(len(b["scores"]), dtype=torch.bool)
        for box, score, label in zip(a["boxes"], a["scores"], a["labels"], strict=True):
            tol = 1e-3 * box.abs().clamp(min=1.0)
            close = (
                unused
                & (b["labels"] == label)
                & ((b["boxes"] - box).abs() <= tol).all(1)
                & ((b["scores"] - score).abs() <= 1e-4)
            )
            assert close.any(), f"image {image}: no partner for {label} {score} {box}"
            unused[close.nonzero()[0, 0]] = False


@pytest.mark.parametrize("steps", [1, 4])
def test_toy_same_detections_as_official_order(steps):
    model = _model("projects/detection/diffdet_toy.yaml").eval()
    batch = _images([(128, 160), (112, 144)])
    fast = model.inference(batch, steps=steps, num_boxes=64, seeds=[5, 6])
    with official_order(model):
        plain = model.inference(batch, steps=steps, num_boxes=64, seeds=[5, 6])
    assert_same_detections(plain, fast)


@pytest.mark.parametrize("steps", [1, 4])
def test_r50_same_detections_as_official_order_float64(steps):
    model = _model("projects/detection/diffdet_r50.yaml", dtype=torch.float64).eval()
    batch = _images([(64, 96)], seed=1)
    _randomise_norms(model, model.preprocess_image(batch)[0])
    with official_order(model):
        plain = model.inference(batch, steps=steps, num_boxes=24, seeds=[7])
    fast = model.inference(batch, steps=steps, num_boxes=24, seeds=[7])
    assert_same_detections(plain, fast)


def test_r50_float32_components_close():
    """float32, the deployed dtype: folded backbone and head agree to rounding level."""
    model = _model("projects/detection/diffdet_r50.yaml").eval()
    batch = _images([(64, 96), (64, 96)], seed=2)
    images, whwh = model.preprocess_image(batch)
    _randomise_norms(model, images)
    with torch.no_grad():
        with official_order(model):
            plain_feats = model.extract_features(images)
        fast_feats = model.extract_features(images)
        for a, b in zip(plain_feats, fast_feats, strict=True):
            # 50 float32 layers, some with near-zero running variance: ~1e-4 of the range
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * float(a.abs().max()))
        g = torch.Generator().manual_seed(0)
        boxes = diffusion_to_boxes(torch.randn(2, 50, 4, generator=g), whwh, scale=2.0)
        t = torch.tensor([999, 500])
        plain_logits, plain_boxes = head_forward(model.head, plain_feats, boxes, t)
        fast_logits, fast_boxes = model.head(plain_feats, boxes, t)
    # the first stage sees identical inputs: only rounding differs
    torch.testing.assert_close(fast_logits[0], plain_logits[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast_boxes[0], plain_boxes[0], rtol=1e-4, atol=1e-3)


def test_folding_follows_loaded_weights():
    """Folding reads the live parameters: no stale copy after load_state_dict."""
    conv = ConvNorm(4, 6, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(6))
    x = torch.randn(2, 4, 8, 8)
    state = {k: torch.randn_like(v) for k, v in conv.state_dict().items()}
    state["norm.running_var"] = state["norm.running_var"].abs() + 0.1
    conv.fold_norm = True
    conv(x)  # a first call before the weights change
    conv.load_state_dict(state)
    folded = conv(x)
    conv.fold_norm = False
    torch.testing.assert_close(folded, conv(x), rtol=1e-5, atol=1e-5)


def test_eval_bn_folds_and_train_bn_does_not():
    conv = ConvNorm(3, 5, 1, bias=True, norm=torch.nn.BatchNorm2d(5))
    conv.fold_norm = True
    conv.norm.running_mean.normal_()
    conv.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 6, 6)
    expected = conv.norm.eval()(torch.nn.functional.conv2d(x, conv.weight, conv.bias))
    torch.testing.assert_close(conv.eval()(x), expected, rtol=1e-5, atol=1e-5)
    conv.train()
    mean_before = conv.norm.running_mean.clone()
    conv(x)  # batch statistics: not folded, running stats updated as usual
    assert not torch.equal(conv.norm.running_mean, mean_before)


def _random_problem(g, *, n, num_gt, num_classes=5):
    wh = torch.rand(num_gt, 2, generator=g) * 40 + 8
    xy = torch.rand(num_gt, 2, generator=g) * 100
    gt = torch.cat([xy, xy + wh], 1)
    pwh = torch.rand(n, 2, generator=g) * 40 + 4
    pxy = torch.rand(n, 2, generator=g) * 100
    return {
        "logits": torch.randn(n, num_classes, generator=g),
        "boxes": torch.cat([pxy, pxy + pwh], 1),
        "labels": torch.randint(0, num_classes, (num_gt,), generator=g),
        "gt": gt,
    }


def test_batched_matcher_equals_official_per_image():
    g = torch.Generator().manual_seed(0)
    matcher = HungarianMatcherDynamicK()
    whwh = torch.tensor([160.0, 140.0, 160.0, 140.0])
    # G > N for one problem (surplus gts stay unmatched), G = 0 for another
    problems = [_random_problem(g, n=30, num_gt=k) for k in (1, 4, 9, 0, 40, 3)]
    max_gt = max(len(p["labels"]) for p in problems)
    labels = torch.zeros(len(problems), max_gt, dtype=torch.int64)
    gts = torch.zeros(len(problems), max_gt, 4)
    valid = torch.zeros(len(problems), max_gt, dtype=torch.bool)
    for i, p in enumerate(problems):
        k = len(p["labels"])
        labels[i, :k], gts[i, :k], valid[i, :k] = p["labels"], p["gt"], True
    matching = matcher.match_batched(
        torch.stack([p["logits"] for p in problems]),
        torch.stack([p["boxes"] for p in problems]),
        gt_labels=labels,
        gt_boxes_xyxy=gts,
        gt_valid=valid,
        image_whwh=whwh.expand(len(problems), 4),
    )
    for i, p in enumerate(problems):
        k = len(p["labels"])
        target = {"labels": p["labels"], "boxes_xyxy": p["gt"], "image_size_xyxy": whwh,
                  "image_size_xyxy_tgt": whwh.expand(k, 4)}  # fmt: skip
        outputs = {"pred_logits": p["logits"][None], "pred_boxes": p["boxes"][None]}
        [(selected, gt_indices)] = match(matcher, outputs, [target])
        [(selected_lib, gt_indices_lib)] = matcher(outputs, [target])
        assert torch.equal(selected_lib, selected) and torch.equal(gt_indices_lib, gt_indices)
        assert torch.equal(matching[i].any(-1), selected), i
        assert not matching[i, :, k:].any()
        if k:
            assert torch.equal(matching[i][selected].int().argmax(-1), gt_indices), i
        assert (matching[i].sum(-1) <= 1).all()


def _train_batch(model, sizes, gts_per_image, seed=0):
    batch = _images(sizes, seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    for item, k in zip(batch, gts_per_image, strict=True):
        h, w = item["image"].shape[-2:]
        wh = torch.rand(k, 2, generator=g) * torch.tensor([w, h]) * 0.4 + 6
        xy = torch.rand(k, 2, generator=g) * (torch.tensor([w, h]) - wh)
        item["instances"] = {"gt_boxes": torch.cat([xy, xy + wh], 1),
                             "gt_classes": torch.randint(0, 4, (k,), generator=g)}  # fmt: skip
    return batch


@pytest.mark.parametrize("use_fed_loss", [False, True])
def test_batched_criterion_equals_official_per_stage(use_fed_loss):
    g = torch.Generator().manual_seed(1)
    weights = torch.rand(5) + 0.1 if use_fed_loss else None
    kwargs = {"num_classes": 5, "use_fed_loss": use_fed_loss, "fed_loss_cls_weights": weights,
              "fed_loss_num_classes": 4}  # fmt: skip
    criterion = SetCriterionDynamicK(**kwargs)
    whwh = torch.tensor([160.0, 140.0, 160.0, 140.0])
    problems = [_random_problem(g, n=20, num_gt=k) for k in (3, 0, 7)]
    targets = []
    for p in problems:
        cxcywh = torch.cat(
            [(p["gt"][:, :2] + p["gt"][:, 2:]) / 2, p["gt"][:, 2:] - p["gt"][:, :2]], 1
        )
        targets.append(
            {
                "labels": p["labels"],
                "boxes_xyxy": p["gt"],
                "boxes": cxcywh / whwh,
                "image_size_xyxy": whwh,
                "image_size_xyxy_tgt": whwh.expand(len(p["gt"]), 4),
            }
        )

    def outputs():
        stages = []
        for _ in range(6):
            jitter = torch.randn(3, 20, 4, generator=g)
            stages.append({"pred_logits": torch.randn(3, 20, 5, generator=g, requires_grad=True),
                           "pred_boxes": (torch.stack([p["boxes"] for p in problems]) + jitter)
                           .requires_grad_()})  # fmt: skip
        return {**stages[-1], "aux_outputs": stages[:-1]}

    out = outputs()
    torch.manual_seed(0)
    expected = criterion_forward(criterion, out, targets)
    torch.manual_seed(0)
    got = criterion(out, targets)
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)
    grads = torch.autograd.grad(sum(got.values()), [out["pred_boxes"], out["pred_logits"]])
    ref = torch.autograd.grad(sum(expected.values()), [out["pred_boxes"], out["pred_logits"]])
    for a, b in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_toy_training_step_same_losses_and_gradients():
    model = _model("projects/detection/diffdet_toy.yaml").train()
    batch = _train_batch(model, [(96, 128), (112, 128)], [3, 5])

    def step():
        model.zero_grad()
        torch.manual_seed(0)  # the same diffusion draws in prepare_targets
        losses = model(batch)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return {k: v.detach() for k, v in losses.items()}, grads

    with official_order(model):
        plain_losses, plain_grads = step()
    fast_losses, fast_grads = step()
    assert fast_losses.keys() == plain_losses.keys()
    for k in plain_losses:
        torch.testing.assert_close(fast_losses[k], plain_losses[k], rtol=1e-4, atol=1e-5, msg=k)
    assert fast_grads.keys() == plain_grads.keys()
    for n in plain_grads:
        scale = float(plain_grads[n].abs().max()) + 1e-12
        torch.testing.assert_close(fast_grads[n], plain_grads[n], rtol=1e-3, atol=1e-3 * scale,
                                   msg=n)  # fmt: skip


def test_eval_forward_outputs_are_editable():
    """forward runs under inference_mode; its outputs are normal tensors."""
    model = _model("projects/detection/diffdet_toy.yaml").eval()
    batch = _images([(96, 128)])
    batch[0]["seed"] = 3
    [out] = model(batch)
    assert not out["boxes"].is_inference()
    out["boxes"][:, 2:] -= out["boxes"][:, :2]  # an evaluator's in-place xyxy -> xywh
