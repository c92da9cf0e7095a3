"""DiffusionInst's model: official checkpoint layout, the dynamic mask head against closed forms
and a second implementation, mask postprocessing, predict's outputs, the mask loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_checkpoint import _official_r50_state_dict

import projects  # noqa: F401  (registers the tasks)
from diffvision.config import get_cfg
from diffvision.engine.weights import load_weights
from diffvision.errors import WeightsError
from projects.detection.diffusioninst import DiffusionInst, build_model
from projects.detection.diffusioninst.criterion import dice_loss, sample_gt_masks
from projects.detection.diffusioninst.head import aligned_bilinear, dynamic_mask_logits
from projects.detection.diffusioninst.model import postprocess_masks

TOY = "projects/detection/diffinst_toy.yaml"


def _official_mask_keys() -> dict[str, tuple[int, ...]]:
    """The 56 keys the official DiffusionInst adds to DiffusionDet's 549 (its head.py); 49 without
    the BatchNorm counters, which a load does not require."""
    keys: dict[str, tuple[int, ...]] = {}
    for s in range(6):
        keys[f"head.head_series.{s}.controller.weight"] = (153, 256)
        keys[f"head.head_series.{s}.controller.bias"] = (153,)

    def conv_bn(prefix: str, c_in: int) -> None:
        keys[f"{prefix}.0.weight"] = (128, c_in, 3, 3)
        for n in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.1.{n}"] = (128,)
        keys[f"{prefix}.1.num_batches_tracked"] = ()

    for i in range(3):
        conv_bn(f"head.mask_refine.{i}", 256)
    for i in range(4):
        conv_bn(f"head.mask_head.{i}", 128)
    keys["head.mask_head.4.weight"] = (8, 128, 1, 1)
    keys["head.mask_head.4.bias"] = (8,)
    return keys


def _official_diffinst_r50_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sd = _official_r50_state_dict()
    for key, shape in _official_mask_keys().items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(450000)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(*shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(*shape, generator=g) * 0.02
    return sd


@pytest.fixture(scope="module")
def r50():
    cfg = get_cfg()
    cfg.merge_from_file("projects/detection/diffinst_r50.yaml")
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg, with_criterion=False)


def test_official_r50_layout_loads_strictly(r50, tmp_path):
    official = _official_diffinst_r50_state_dict()
    assert len(official) == 605
    assert set(official) == set(r50.state_dict())
    path = tmp_path / "diffinst_coco_res50.pth"
    torch.save({"model": official, "iteration": 449999}, path)
    info = load_weights(r50, path)
    assert info["format"] == "full" and not (info["missing"] or info["unexpected"])
    loaded = r50.state_dict()
    for key, value in official.items():
        assert torch.equal(loaded[key], value), key


def test_diffusiondet_checkpoint_names_the_missing_mask_keys(r50, tmp_path):
    path = tmp_path / "diffdet_coco_res50.pth"
    torch.save({"model": _official_r50_state_dict()}, path)
    missing = r"missing keys: 49 \(head.head_series.0.controller.weight"
    with pytest.raises(WeightsError, match=missing):
        load_weights(r50, path)


def test_dynamic_mask_head_closed_form():
    # channel 0 of the mask features holds x in {-2, -1, 0, 1, 2, 3}; the others are noise the
    # parameters ignore. W1 rows 0/1 = +e0/-e0 (relu(x), relu(-x)), W2 = I, W3 = [1, 1, 0...],
    # b3 = 0.5: the logit is |x| + 0.5. Layout: W1 (8x8), W2 (8x8), W3 (1x8), b1, b2, b3.
    x = torch.tensor([[-2.0, -1.0, 0.0], [1.0, 2.0, 3.0]])
    feat = torch.randn(8, 2, 3)
    feat[0] = x
    p = torch.zeros(153)
    p[0 * 8 + 0], p[1 * 8 + 0] = 1.0, -1.0  # W1[0, 0], W1[1, 0]
    for i in range(8):
        p[64 + i * 8 + i] = 1.0  # W2 = identity
    p[128 + 0] = p[128 + 1] = 1.0  # W3[0, 0], W3[0, 1]
    p[152] = 0.5  # b3
    out = dynamic_mask_logits(feat, p[None])
    torch.testing.assert_close(out[0], x.abs() + 0.5)
    # biases: b1[0] = 1 shifts relu(x) to relu(x + 1); b2 sits at 144..151
    p[136] = 1.0
    p[144 + 1] = -0.5  # b2[1]: relu(relu(-x) - 0.5)
    expected = (x + 1).clamp(min=0) + ((-x).clamp(min=0) - 0.5).clamp(min=0) + 0.5
    torch.testing.assert_close(dynamic_mask_logits(feat, p[None])[0], expected)


def test_dynamic_mask_head_matches_grouped_conv():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(8, 5, 7, generator=g)
    params = torch.randn(4, 153, generator=g)
    w1, w2, w3 = params[:, :64], params[:, 64:128], params[:, 128:136]
    b1, b2, b3 = params[:, 136:144], params[:, 144:152], params[:, 152:]
    k = params.shape[0]
    # the official computation: one grouped 1x1 conv per layer, one group per instance
    x = feat[None].repeat(1, k, 1, 1)  # (1, K*8, H, W)
    x = F.relu(F.conv2d(x, w1.reshape(k * 8, 8, 1, 1), b1.reshape(-1), groups=k))
    x = F.relu(F.conv2d(x, w2.reshape(k * 8, 8, 1, 1), b2.reshape(-1), groups=k))
    x = F.conv2d(x, w3.reshape(k, 8, 1, 1), b3.reshape(-1), groups=k)
    torch.testing.assert_close(dynamic_mask_logits(feat, params), x[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 4])
def test_aligned_bilinear_puts_output_pixel_on_input_pixel(factor):
    x = torch.randn(1, 2, 3, 5)
    y = aligned_bilinear(x, factor)
    assert y.shape[-2:] == (3 * factor, 5 * factor)
    o = factor // 2
    torch.testing.assert_close(y[..., o::factor, o::factor], x)
    # a ramp stays a ramp between the sample points
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 2, 4)
    r = aligned_bilinear(ramp, factor)[0, 0, 0]
    inner = torch.arange(o, 3 * factor + o + 1, dtype=torch.float32)
    torch.testing.assert_close(r[o : 3 * factor + o + 1], (inner - o) / factor)


def test_postprocess_masks_threshold_and_box_crop():
    # uniform probability 0.7 on a 16x16 padded input (stride-4 grid 4x4), unpadded 12x16,
    # original 24x32: everything is > 0.5, so the mask is exactly the truncated box
    probs = torch.full((2, 4, 4), 0.7)
    boxes = torch.tensor([[3.9, 2.2, 10.7, 9.99], [0.0, 0.0, 32.0, 24.0]])
    masks = postprocess_masks(probs, boxes, (12, 16), (24, 32))
    assert masks.dtype == torch.bool and masks.shape == (2, 24, 32)
    expected = torch.zeros(24, 32, dtype=torch.bool)
    expected[2:9, 3:10] = True  # rows int(2.2)..int(9.99)-1, columns int(3.9)..int(10.7)-1
    assert torch.equal(masks[0], expected)
    assert masks[1].all()
    assert not postprocess_masks(torch.full((1, 4, 4), 0.3), boxes[1:], (12, 16), (24, 32)).any()


def test_dice_loss_closed_form():
    logits = torch.zeros(1, 4, 5)  # p = 0.5 everywhere
    gt = torch.zeros(1, 4, 5)
    gt[0, :2, :3] = 1  # 6 ones of 20
    expected = 1 - 2 * 0.5 * 6 / (0.25 * 20 + 6 + 1e-5)
    torch.testing.assert_close(dice_loss(logits, gt), torch.tensor([expected]))


def test_sample_gt_masks_takes_every_fourth_pixel_from_offset_two():
    masks = torch.zeros(1, 10, 13, dtype=torch.bool)
    masks[0, 2, 6] = masks[0, 6, 10] = masks[0, 3, 3] = True  # (3, 3) is not on the grid
    out = sample_gt_masks(masks, (4, 4))  # padded to 16x16: grid rows/cols 2, 6, 10, 14
    expected = torch.zeros(1, 4, 4)
    expected[0, 0, 1] = expected[0, 1, 2] = 1
    assert torch.equal(out, expected)


@pytest.fixture(scope="module")
def toy():
    cfg = get_cfg()
    cfg.merge_from_file(TOY)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    return build_model(cfg)


def test_predict_returns_masks_at_the_original_size(toy):
    img = (np.random.default_rng(0).random((150, 170, 3)) * 255).astype(np.uint8)
    init = torch.randn(1, 20, 4, generator=torch.Generator().manual_seed(3))
    out = toy.predict([img], num_boxes=20, steps=1, init_boxes=init)[0]
    again = toy.predict([img], num_boxes=20, steps=1, init_boxes=init)[0]
    assert set(out) == {"boxes", "scores", "labels", "masks"}
    k = len(out["boxes"])
    assert k > 0 and out["boxes"].dtype == torch.float32 and out["scores"].shape == (k,)
    assert out["masks"].shape == (k, 150, 170) and out["masks"].dtype == torch.bool
    for key in out:
        assert torch.equal(out[key], again[key]), key
    # every mask lies inside the truncated rows/columns of its box
    for box, mask in zip(out["boxes"], out["masks"], strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):
            assert ys.min() >= int(box[1]) and ys.max() < int(box[3])
            assert xs.min() >= int(box[0]) and xs.max() < int(box[2])
    # several steps pool the candidates (ensemble) and still give one mask per detection
    multi = toy.predict([img], num_boxes=20, steps=3, seed=0)[0]
    assert multi["masks"].shape[0] == multi["boxes"].shape[0]


def test_mask_params_are_the_controller_on_the_regression_feature(toy):
    # a second implementation: the stage's own regression feature is the input of its
    # bboxes_delta layer; read it with a hook and apply the controller
    model: DiffusionInst = toy.eval()
    captured = []
    stage = model.head.head_series[-1]
    hook = stage.bboxes_delta.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    try:
        img = (np.random.default_rng(1).random((96, 128, 3)) * 255).astype(np.uint8)
        with torch.no_grad():
            images, whwh = model.preprocess_image(
                [{"image": torch.from_numpy(img.transpose(2, 0, 1).copy())}]
            )
            feats = model.extract_features(images)
            boxes = torch.tensor([[[10.0, 10, 50, 60], [0, 0, 96, 96], [30, 5, 80, 40]]])
            model.head(feats, boxes, torch.tensor([500]))
    finally:
        hook.remove()
    assert len(captured) == 1
    expected = stage.controller(captured[0]).view(1, 3, 153)
    torch.testing.assert_close(model.head.mask_params[-1], expected, rtol=1e-5, atol=1e-5)


def test_a_deep_copy_records_its_own_stages(toy):
    # EMA weights are a deepcopy: the copy's stage hooks must fill the copy's head
    import copy

    twin = copy.deepcopy(toy).eval()
    img = (np.random.default_rng(2).random((64, 80, 3)) * 255).astype(np.uint8)
    toy.head.mask_params = None
    out = twin.predict([img], num_boxes=10, steps=1, seed=0)[0]
    assert out["masks"].shape[1:] == (64, 80)
    assert toy.head.mask_params is None and twin.head.mask_params is not None


def test_reduced_precision_reads_the_running_heads_parameters(toy):
    # TEST.PRECISION bf16 runs a converted copy of the head: the candidates' parameters and the
    # mask features must come from that copy (the float32 head is not called at all)
    model = toy.eval()
    img = (np.random.default_rng(3).random((72, 96, 3)) * 255).astype(np.uint8)
    try:
        model.set_precision("bf16")
        model.head.mask_params = None
        out = model.predict([img], num_boxes=12, steps=2, seed=0)[0]
    finally:
        model.set_precision("fp32")
    assert model.head.mask_params is None
    assert out["boxes"].dtype == out["scores"].dtype == torch.float32
    assert out["masks"].dtype == torch.bool and out["masks"].shape[1:] == (72, 96)
