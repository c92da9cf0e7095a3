from __future__ import annotations

import math

import pytest
import torch
import torchvision

from diffvision.diffusion.forward import add_noise
from diffvision.engine.weights import load_weights
from diffvision.errors import WeightsError
from diffvision.modeling.torchvision_resnet import TorchvisionResNet
from projects.segmentation.ddep.model import DDeP, EncoderUNet, fixed_level_schedule


def _net(out_channels=3, **kw):
    return EncoderUNet(
        encoder=TorchvisionResNet(depth=18),
        out_channels=out_channels,
        decoder_channels=(32, 16, 16, 8, 8),
        **kw,
    )


def test_fixed_level_is_scaled_additive_noise():
    sigma = 0.22
    schedule = fixed_level_schedule(sigma)
    assert float(schedule.alphas_cumprod[0]) == pytest.approx(1 / (1 + sigma**2))
    x, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    expected = (x + sigma * eps) / math.sqrt(1 + sigma**2)
    torch.testing.assert_close(add_noise(schedule, x, eps, 0), expected)
    with pytest.raises(ValueError, match="sigma"):
        fixed_level_schedule(0.0)


def test_denoise_mode_freezes_encoder_in_eval_and_predicts_noise():
    torch.manual_seed(0)
    model = DDeP(network=_net(), mode="denoise", noise_sigma=0.22)
    model.train()
    assert not model.network.backbone.training and model.network.decoder.training
    assert all(not p.requires_grad for p in model.network.backbone.parameters())
    bn = model.network.backbone["stem"][1]
    before = bn.running_mean.clone()
    batch = {"image": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)}
    loss = model(batch)["loss_denoise"]
    loss.backward()
    torch.testing.assert_close(bn.running_mean, before)  # BN statistics did not drift
    assert model.network.head.weight.grad is not None and loss.item() > 0
    # The loss is the L2 between the prediction and the ε that made the input.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x0 = batch["image"].float() / 127.5 - 1
    x_noisy, eps = model.corrupt(x0, generator=g1)
    loss2 = model({**batch, "generator": g2})["loss_denoise"]
    pred = model.network(model._normalize(x_noisy))
    torch.testing.assert_close(loss2, torch.nn.functional.mse_loss(pred, eps))
    # Fine-tuning mode trains everything.
    seg = DDeP(network=_net(5), mode="segment", num_classes=5).train()
    assert seg.network.backbone.training
    assert all(p.requires_grad for p in seg.network.parameters())


def test_multilevel_draws_levels_from_core_schedule():
    """The "full diffusion" variant draws t ~ U{0..999} per image from the DDPM linear schedule
    (β from 1e-4 to 0.02, arXiv:2006.11239, Sec. 4): for x0 = 0 the input is √(1−ᾱ_t) ε."""
    model = DDeP(network=_net(), mode="denoise", noise_levels="schedule")
    assert model.schedule.num_timesteps == 1000
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    levels = (1 - alpha_bar).sqrt()
    x0 = torch.zeros(256, 3, 2, 2)
    x_noisy, eps = model.corrupt(x0, generator=torch.Generator().manual_seed(0))
    ratios = (x_noisy / eps).double()  # (256, 3, 2, 2)
    torch.testing.assert_close(ratios, ratios[:, :1, :1, :1].expand_as(ratios))  # one t per image
    gap, t = (ratios[:, 0, 0, 0, None] - levels).abs().min(dim=1)
    assert gap.max() < 1e-5  # every level is one of the schedule's
    assert len(t.unique()) > 200 and 400 < t.double().mean() < 600  # uniform over 0..999
    with pytest.raises(ValueError, match="noise_levels"):
        DDeP(network=_net(), mode="denoise", noise_levels="uniform")


def test_segment_shapes_ignore_and_transformer_variant():
    model = DDeP(network=_net(4), mode="segment", num_classes=4).train()
    batch = {
        "image": torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8),
        "sem_seg": torch.full((2, 64, 96), 255, dtype=torch.long),
    }
    assert model(batch)["loss_sem_seg"].item() == 0.0  # only ignored pixels: no NaN
    model.eval()
    out = model(batch)
    assert len(out) == 2 and out[0]["sem_seg"].shape == (4, 64, 96)
    trans = EncoderUNet(
        encoder=TorchvisionResNet(depth=18, out_features=("stem", "layer1", "layer2", "layer3")),
        out_channels=4,
        decoder_channels=(32, 16, 16, 8),
        transformer_layers=1,
        transformer_dim=32,
        transformer_heads=2,
    )
    x = torch.randn(1, 3, 48, 64)
    assert trans(x).shape == (1, 4, 48, 64)
    # The Transformer replaces layer4: the encoder stops at stride 16, and every token of the
    # bottleneck sees every other one (a change in one corner reaches the opposite corner,
    # which the bottleneck's 3×3 output convolution alone could not do).
    trans.eval()
    deep = trans.encode(x)[-1]
    assert deep.shape[-2:] == (3, 4) and "layer4" not in trans.backbone
    moved = deep.clone()
    moved[..., 0, 0] += 1.0
    with torch.no_grad():
        far = trans.bottleneck(moved)[..., -1, -1] - trans.bottleneck(deep)[..., -1, -1]
    assert far.abs().max() > 1e-4
    with pytest.raises(ValueError, match="decoder_channels"):
        EncoderUNet(encoder=TorchvisionResNet(depth=18), decoder_channels=(8, 8))


def test_weight_loading(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    net = _net()
    info = load_weights(net.backbone, str(tmp_path / "r18.pth"))  # MODEL.DDEP.ENCODER_WEIGHTS
    assert info["format"] == "torchvision-resnet (DDeP encoder)"
    torch.testing.assert_close(net.backbone["layer1"][1][0].conv1.weight, tv.layer1[0].conv1.weight)
    torch.testing.assert_close(net.backbone["stem"][0].weight, tv.conv1.weight)
    # A denoising checkpoint initialises a C-class segmenter, except for the head.
    pre = DDeP(network=_net(3), mode="denoise")
    torch.save({"model": pre.state_dict()}, tmp_path / "pre.pth")
    seg = DDeP(network=_net(5), mode="segment", num_classes=5)
    info = load_weights(seg, str(tmp_path / "pre.pth"))  # strict, but the head may differ
    assert [m.split(" ")[0] for m in info["mismatched"]] == [
        "network.head.weight",
        "network.head.bias",
    ]
    torch.testing.assert_close(
        seg.network.decoder[0].convs[0].weight, pre.network.decoder[0].convs[0].weight
    )
    assert seg.network.head.weight.shape[0] == 5
    with pytest.raises(FileNotFoundError):
        load_weights(seg, str(tmp_path / "missing.pth"))
    # Anything else that does not fit is an error naming the keys.
    state = pre.state_dict()
    del state["network.decoder.0.convs.0.weight"]
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match=r"missing keys: 1 \(network.decoder.0.convs.0.weight"):
        load_weights(seg, str(tmp_path / "partial.pth"))


def test_class_weighted_loss_is_the_weighted_pixel_mean():
    """sum_i w_{y_i} CE_i / #labeled, checked against a per-pixel sum; weights of 1 give the plain
    cross-entropy, and the divisor is the labeled-pixel count whatever classes the batch holds."""
    torch.manual_seed(0)
    model = DDeP(network=_net(3), mode="segment", num_classes=3)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0] = 255  # an ignored row
    weights = torch.tensor([0.5, 2.0, 8.0])
    labeled = target != 255
    log_p = logits.log_softmax(1).permute(0, 2, 3, 1)[labeled]  # (N, 3)
    ce = -log_p.gather(1, target[labeled][:, None])[:, 0]
    expected = (weights[target[labeled]] * ce).sum() / labeled.sum()
    torch.testing.assert_close(model.segmentation_loss(logits, target, weights), expected)
    plain = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(model.segmentation_loss(logits, target, torch.ones(3)), plain)
    assert model.segmentation_loss(logits, target, None).item() == plain.item()
    # a batch of one class: weight times its mean CE, not renormalised away
    single = torch.ones_like(target)
    one_class = model.segmentation_loss(logits, single, weights)
    torch.testing.assert_close(one_class, 2.0 * model.segmentation_loss(logits, single, None))
