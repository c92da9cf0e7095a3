"""DiffusionDet end to end at toy size: training losses, seeded and batched inference, predict()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffvision.data.detection_transforms import ResizeTransform, resized_shape
from diffvision.modeling.fpn import build_resnet_fpn_backbone
from projects.detection.criterion import SetCriterionDynamicK
from projects.detection.detector import SCHEDULE_BUFFERS, DiffusionDet
from projects.detection.head import DynamicHead

K = 3


def _model(**kwargs) -> DiffusionDet:
    torch.manual_seed(0)
    backbone = build_resnet_fpn_backbone(
        depth=18, freeze_at=0, out_channels=32, stem_channels=16, res2_channels=16
    )
    head = DynamicHead(
        num_classes=K, num_heads=2, hidden_dim=32, dim_feedforward=64, nhead=2, dim_dynamic=8
    )
    defaults = dict(
        backbone=backbone,
        head=head,
        criterion=SetCriterionDynamicK(num_classes=K, num_aux_stages=1),
        num_proposals=12,
        min_size_test=64,
        max_size_test=96,
    )
    defaults.update(kwargs)
    return DiffusionDet(**defaults)


def _batch(train: bool = True) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    batch = []
    for i, (h, w) in enumerate([(64, 80), (48, 64)]):
        x = {
            "image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
            "height": 2 * h,
            "width": 2 * w,
            "image_id": i,
        }
        if train:
            n = 2 if i == 0 else 0  # the second image has no boxes
            x["instances"] = {
                "gt_boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]])[:n],
                "gt_classes": torch.tensor([0, 2])[:n],
            }
        batch.append(x)
    return batch


def test_schedule_buffers_are_the_official_float64_ones():
    model = _model()
    buffers = dict(model.named_buffers())
    for name in SCHEDULE_BUFFERS:
        assert buffers[name].dtype == torch.float64 and buffers[name].shape == (1000,)
    assert torch.allclose(
        model.sqrt_recipm1_alphas_cumprod[499], torch.tensor(1.01239).double(), rtol=1e-5
    )
    assert model.alphas_cumprod_prev[0] == 1.0
    assert model.betas[999] == 0.999  # the only clipped beta
    assert model.posterior_variance[0] == 0.0
    assert model.posterior_log_variance_clipped[0] == math.log(1e-20)  # official clamp
    core = model.schedule  # the shared core's schedule agrees with the official formulas
    torch.testing.assert_close(model.posterior_mean_coef1, core.posterior_mean_coef1)
    torch.testing.assert_close(model.posterior_mean_coef2, core.posterior_mean_coef2)
    torch.testing.assert_close(model.posterior_variance, core.posterior_variance)


def test_training_losses_are_finite_and_backpropagate():
    model = _model().train()
    losses = model(_batch())
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grad = model.head.head_series[1].class_logits.weight.grad
    assert grad is not None and torch.isfinite(grad).all()


def test_non_finite_boxes_give_nan_losses_from_that_stage_on():
    """A diverged stage must not crash (roi_align segfaults on NaN boxes, the matcher fails on
    NaN costs): its losses and the later stages' are NaN, the earlier ones stay finite, so the
    trainer's FloatingPointError names the iteration and shows which terms diverged."""
    model = _model().train()
    with torch.no_grad():
        model.head.head_series[1].bboxes_delta.bias.fill_(float("nan"))
    losses = model(_batch())
    assert all(torch.isfinite(v) for k, v in losses.items() if k.endswith("_0"))
    assert all(torch.isnan(v) for k, v in losses.items() if not k.endswith("_0"))


def test_eval_forward_returns_boxes_in_original_pixels():
    """Boxes are mapped from the resized input to ``height`` × ``width``: with the same seeds,
    asking for a (2h, 3w) original scales every box by (3, 2, 3, 2) (the clip to the image and
    the drop of empty boxes commute with that scaling), scores and labels unchanged."""
    model = _model().eval()
    resized = [dict(x, seed=10 + i) for i, x in enumerate(_batch(train=False))]
    for x in resized:  # no height/width: boxes stay in the resized input's pixels
        del x["height"], x["width"]
    original = [
        dict(x, height=2 * x["image"].shape[1], width=3 * x["image"].shape[2]) for x in resized
    ]
    small, large = model(resized), model(original)
    assert len(large) == 2
    scale = torch.tensor([3.0, 2.0, 3.0, 2.0])
    for out, ref in zip(large, small, strict=True):
        assert set(out) == {"boxes", "scores", "labels"} and out["labels"].dtype == torch.int64
        assert len(ref["boxes"]) > 0  # something to compare
        torch.testing.assert_close(out["boxes"], ref["boxes"] * scale, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(out["scores"], ref["scores"], rtol=0, atol=0)
        assert out["labels"].tolist() == ref["labels"].tolist()


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (60, 90, 3), dtype=np.uint8) for _ in range(n)]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["labels"].tolist() == y["labels"].tolist()
        torch.testing.assert_close(x["boxes"], y["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(x["scores"], y["scores"], rtol=1e-4, atol=1e-5)


def test_seeded_predict_is_deterministic():
    model = _model(sample_step=2)
    images = _images(1)
    _assert_same(model.predict(images, seed=7), model.predict(images, seed=7))
    other = model.predict(images, seed=8)[0]["scores"]
    assert not torch.equal(other, model.predict(images, seed=7)[0]["scores"])


def test_batched_predict_equals_per_image_predict():
    model = _model(sample_step=3)  # several steps: renewal and refills per image
    images = _images(3)
    batched = model.predict(images, seed=100)
    single = [model.predict([img], seed=100 + i)[0] for i, img in enumerate(images)]
    _assert_same(batched, single)


def test_init_boxes_fix_the_one_step_result():
    model = _model()
    init = torch.randn(2, 12, 4)
    a = model.predict(_images(2), init_boxes=init, seed=1)
    b = model.predict(_images(2), init_boxes=init, seed=2)
    _assert_same(a, b)
    with pytest.raises(ValueError, match="init_boxes"):
        model.predict(_images(2), init_boxes=torch.randn(2, 5, 4))


def test_official_ensemble_drops_the_last_step():
    # The official ``ddim_sample`` (DiffusionDet, diffusiondet/detector.py) ensembles every step
    # but the last: 2 steps give exactly the 1-step result. The option that keeps the last step
    # is checked against the written-out loop below.
    model = _model()
    images = _images(2)
    _assert_same(model.predict(images, steps=2, seed=5), model.predict(images, steps=1, seed=5))


def test_predict_resizes_like_detectron2():
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)
    model = _model()
    image = _images(1)[0][:30]  # (30, 90, 3) → shortest edge 64 would make it 192 wide: 32 × 96
    new_h, new_w = resized_shape(30, 90, 64, 96)
    assert (new_h, new_w) == (32, 96)
    out = model.predict(image, seed=0)
    # the same network on the image resized by detectron2's transform, boxes left in its pixels
    resized = ResizeTransform(30, 90, new_h, new_w).apply_image(image)
    tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    ref = model.eval().inference([{"image": tensor}], seeds=[0])[0]
    assert len(ref["boxes"]) > 0
    scale = torch.tensor([90 / 96, 30 / 32, 90 / 96, 30 / 32])
    torch.testing.assert_close(out[0]["boxes"], ref["boxes"] * scale, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out[0]["scores"], ref["scores"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="uint8"):
        model.predict(np.zeros((30, 20, 3), dtype=np.float32))


def _official_ddim_sample(model, image, init, noise, refill, steps, include_last=False):
    """The official ``ddim_sample`` loop (DiffusionDet, diffusiondet/detector.py) written out,
    batch 1, own draws; ``include_last`` also ensembles the last step's predictions.

    Returns the candidates (boxes, scores, labels) before NMS and the kept count per renewal."""
    from projects.detection.box_diffusion import boxes_to_diffusion, diffusion_to_boxes

    images, whwh = model.preprocess_image([{"image": image}])
    features = model.extract_features(images)
    times = list(reversed(torch.linspace(-1, 999, steps=steps + 1).int().tolist()))
    ac = model.alphas_cumprod
    x, candidates, kept = init[None], [], []
    for k, (t, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
        logits, boxes = model.head(features, diffusion_to_boxes(x, whwh), torch.tensor([t]))
        logits, boxes = logits[-1], boxes[-1]
        if steps > 1 and (t_next >= 0 or include_last):  # official: the last step is dropped
            candidates.append(model._topk(logits, boxes, init.shape[0]))
        if t_next < 0:
            break
        x0 = boxes_to_diffusion(boxes, whwh).double()
        a, a_next = ac[t], ac[t_next]
        eps = ((1 / a).sqrt() * x.double() - x0) / (1 / a - 1).sqrt()
        sigma = model.ddim_eta * ((1 - a / a_next) * (1 - a_next) / (1 - a)).sqrt()
        c = (1 - a_next - sigma**2).sqrt()
        x = (x0 * a_next.sqrt() + c * eps + sigma * noise[k].double()).float()
        keep = logits.sigmoid().amax(dim=-1) > 0.5  # box renewal
        kept.append(int(keep.sum()))
        x = torch.where(keep[..., None], x, refill[k][None])
    if not candidates:
        candidates = [model._topk(logits, boxes, init.shape[0])]
    return (*(torch.cat([c[j] for c in candidates], dim=1) for j in range(3)), kept)


@pytest.mark.parametrize(
    "steps, include_last", [(1, False), (3, False), (4, False), (3, True), (1, True)]
)
def test_sampling_through_the_core_loop_equals_the_official_loop(steps, include_last):
    model = _model(ensemble_include_last_step=include_last).eval()
    with torch.no_grad():  # scores around 0.5: renewal keeps some boxes, replaces others
        model.head.head_series[-1].class_logits.bias.fill_(-0.9)
    g = torch.Generator().manual_seed(steps)
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8, generator=g)
    init = torch.randn(12, 4, generator=g)
    noise, refill = torch.randn(2, max(steps - 1, 1), 12, 4, generator=g)
    with torch.no_grad():
        want = _official_ddim_sample(model, image, init, noise, refill, steps, include_last)
        images, whwh = model.preprocess_image([{"image": image}])
        got = model.sample_boxes(
            model.extract_features(images),
            whwh,
            init[None],
            steps=steps,
            draws=lambda i: (noise[i][None], refill[i][None]),
        )
    if steps > 1:  # renewal kept some boxes and replaced others: both branches compared
        assert any(0 < k < 12 for k in want[3]), want[3]
    ensembled = 1 if steps == 1 else steps - 1 + include_last
    assert got[0].shape == (1, 12 * ensembled, 4)
    assert got[2].tolist() == want[2].tolist()
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
