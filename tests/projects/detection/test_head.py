"""Dynamic head maths against reference diffusiondet.md §1.4-§1.8 and the §5.2 key layout."""

from __future__ import annotations

import math

import pytest
import torch
from official_keys import official_head_keys

from projects.detection.head import (
    SCALE_CLAMP,
    DynamicConv,
    DynamicHead,
    RCNNHead,
    SinusoidalPositionEmbeddings,
    apply_deltas,
)
from projects.detection.pooler import ROIPooler

PRIOR = -math.log((1 - 0.01) / 0.01)


def test_head_keys_and_shapes_match_official_checkpoint():
    with torch.device("meta"):
        head = DynamicHead(num_classes=80)
    sd = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert sd == official_head_keys(80)
    assert len(sd) == 4 + 6 * 42


def test_sinusoidal_embedding_formula():
    emb = SinusoidalPositionEmbeddings(256)(torch.tensor([0, 7, 999]))
    i = torch.arange(128, dtype=torch.float64)
    f = torch.exp(-i * math.log(10000) / 127)
    t = torch.tensor([0.0, 7.0, 999.0], dtype=torch.float64)[:, None]
    expected = torch.cat([torch.sin(t * f), torch.cos(t * f)], dim=1)
    torch.testing.assert_close(emb.double(), expected, rtol=1e-5, atol=1e-4)


def test_apply_deltas_weights_and_clamp():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 0.0, 10.0]])
    deltas = torch.tensor([[2.0, -2.0, math.log(2.0), 20.0], [1.0, 1.0, 1.0, 1.0]])
    out = apply_deltas(deltas, boxes)
    # box 0: w=40, h=20, c=(30, 30); dx=1, dy=-1, dw=log 2, dh=clamp(20)=8.7403
    pw, ph = 80.0, 20.0 * math.exp(SCALE_CLAMP)
    pcx, pcy = 1.0 * 40 + 30, -1.0 * 20 + 30
    expected0 = torch.tensor([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2])
    torch.testing.assert_close(out[0], expected0)
    assert math.isclose(SCALE_CLAMP, 8.7403, abs_tol=1e-4)
    # a zero-width box stays zero-width with an unmoved x centre (reference §1.7)
    assert out[1, 0] == out[1, 2] == 0.0


def test_dynamic_conv_flatten_order_is_position_major():
    torch.manual_seed(0)
    conv = DynamicConv(hidden_dim=8, dim_dynamic=4, pooler_resolution=2)
    m = 3
    pro = torch.randn(m, 8)
    roi = torch.randn(m, 8, 4)  # (M, D, S²), the pooler's layout
    out = conv(pro, roi)
    # re-derive with explicit indices: out_layer.weight[o, p·D + c]
    params = conv.dynamic_layer(pro)
    w1 = params[:, : 8 * 4].view(m, 8, 4)
    w2 = params[:, 8 * 4 :].view(m, 4, 8)
    f = roi.permute(0, 2, 1)  # (M, P, D)
    f = torch.relu(conv.norm1(f @ w1))
    f = torch.relu(conv.norm2(f @ w2))  # (M, P, D)
    w = conv.out_layer.weight.view(8, 4, 8)  # (out, p, c)
    expected = torch.einsum("mpc,opc->mo", f, w) + conv.out_layer.bias
    torch.testing.assert_close(out, torch.relu(conv.norm3(expected)), rtol=1e-5, atol=1e-5)


def _small_stage() -> RCNNHead:
    return RCNNHead(
        num_classes=3,
        hidden_dim=16,
        dim_feedforward=32,
        nhead=2,
        dim_dynamic=4,
        pooler_resolution=7,
        time_dim=64,
    )


def _features(b: int = 2, d: int = 16) -> list[torch.Tensor]:
    return [torch.randn(b, d, 64 // s, 64 // s) for s in (4, 8, 16, 32)]


def test_time_conditions_only_the_towers():
    torch.manual_seed(0)
    stage = _small_stage().eval()
    feats = _features()
    boxes = torch.tensor([[[4.0, 4.0, 30.0, 40.0], [10.0, 8.0, 60.0, 50.0]]]).repeat(2, 1, 1)
    pooler = ROIPooler()
    scale_shift_a = stage.block_time_mlp(torch.randn(2, 64))
    scale_shift_b = stage.block_time_mlp(torch.randn(2, 64))
    logits_a, boxes_a, obj_a = stage(feats, boxes, None, pooler, scale_shift_a)
    logits_b, boxes_b, obj_b = stage(feats, boxes, None, pooler, scale_shift_b)
    torch.testing.assert_close(obj_a, obj_b)  # object features carry no time modulation
    assert not torch.allclose(logits_a, logits_b)
    assert logits_a.shape == (2, 2, 3) and boxes_a.shape == (2, 2, 4) and obj_a.shape == (4, 16)


def test_stages_are_detached_and_deep_supervised():
    torch.manual_seed(0)
    head = DynamicHead(
        num_classes=3, num_heads=2, hidden_dim=16, dim_feedforward=32, nhead=2, dim_dynamic=4
    )
    boxes = torch.tensor([[[4.0, 4.0, 30.0, 40.0], [10.0, 8.0, 60.0, 50.0]]]).repeat(2, 1, 1)
    logits, pred = head(_features(), boxes, torch.tensor([3, 500]))
    assert logits.shape == (2, 2, 2, 3) and pred.shape == (2, 2, 2, 4)
    pred[1].sum().backward()
    # stage 1's boxes do not backpropagate into stage 0's box regressor
    grad = head.head_series[0].bboxes_delta.weight.grad
    assert grad is None or torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("num_classes", [80, 1203])
def test_prior_bias_init_equals_official_rule_for_official_k(num_classes):
    with torch.device("meta"):
        head = DynamicHead(num_classes=num_classes)
    # the official loop: every head tensor whose last dim is K or K+1
    hit = {n for n, p in head.named_parameters() if p.shape[-1] in (num_classes, num_classes + 1)}
    assert hit == {f"head_series.{s}.class_logits.bias" for s in range(6)}


def test_prior_bias_only_on_class_logits_for_custom_k():
    torch.manual_seed(0)
    head = DynamicHead(
        num_classes=4, num_heads=2, hidden_dim=16, dim_feedforward=32, nhead=2, dim_dynamic=4
    )
    for stage in head.head_series:
        assert torch.allclose(stage.class_logits.bias, torch.full((4,), PRIOR))
        # the official rule would also set this size-4 bias to the prior (reference §1.8 quirk)
        assert not torch.allclose(stage.bboxes_delta.bias, torch.full((4,), PRIOR))
    assert (head.head_series[0].self_attn.in_proj_bias == 0).all()


def test_scale_shifts_are_each_stages_time_mlp():
    torch.manual_seed(0)
    head = DynamicHead(
        num_classes=3, num_heads=3, hidden_dim=16, dim_feedforward=32, nhead=2, dim_dynamic=4
    )
    time_emb = torch.randn(2, 64)
    got = head.scale_shifts(time_emb)  # one matmul for all stages
    assert got.shape == (3, 2, 32)
    for stage, scale_shift in zip(head.head_series, got, strict=True):
        torch.testing.assert_close(scale_shift, stage.block_time_mlp(time_emb))
