"""ResNet/FPN with detectron2 names: key layout, freezing, equivalence with torchvision."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from diffvision.modeling.fpn import build_resnet_fpn_backbone
from diffvision.modeling.resnet import ResNet, convert_torchvision_resnet


def _r50_bottom_up_keys() -> set[str]:
    """The 265 ``backbone.bottom_up`` keys of the released ``diffdet_coco_res50.pth``, without the
    prefix."""
    norm = ("weight", "bias", "running_mean", "running_var")
    keys = {"stem.conv1.weight"} | {f"stem.conv1.norm.{n}" for n in norm}
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3), strict=True):
        for i in range(blocks):
            convs = ["conv1", "conv2", "conv3"] + (["shortcut"] if i == 0 else [])
            for conv in convs:
                keys.add(f"res{stage}.{i}.{conv}.weight")
                keys |= {f"res{stage}.{i}.{conv}.norm.{n}" for n in norm}
    return keys


def test_r50_keys_and_shapes_match_detectron2():
    with torch.device("meta"):
        backbone = build_resnet_fpn_backbone(depth=50)
    sd = backbone.state_dict()
    bottom_up = {k.removeprefix("bottom_up.") for k in sd if k.startswith("bottom_up.")}
    assert bottom_up == _r50_bottom_up_keys()
    assert len(bottom_up) == 265
    fpn = {k for k in sd if not k.startswith("bottom_up.")}
    assert fpn == {
        f"fpn_{kind}{lv}.{p}"
        for kind in ("lateral", "output")
        for lv in (2, 3, 4, 5)
        for p in ("weight", "bias")
    }
    assert sd["bottom_up.res4.0.shortcut.weight"].shape == (1024, 512, 1, 1)
    assert sd["bottom_up.res5.2.conv2.weight"].shape == (512, 512, 3, 3)
    assert sd["fpn_lateral5.weight"].shape == (256, 2048, 1, 1)
    assert not any("num_batches_tracked" in k for k in sd)


def test_r101_key_count():
    with torch.device("meta"):
        assert len(build_resnet_fpn_backbone(depth=101).state_dict()) == 804 - 12 - 256


def test_freeze_at_two_freezes_stem_and_res2_only():
    resnet = ResNet(depth=18, freeze_at=2)
    for name, p in resnet.named_parameters():
        assert p.requires_grad == (not name.startswith(("stem.", "res2."))), name


def test_frozen_bn_everywhere_is_batch_independent():
    resnet = ResNet(depth=18).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        both = resnet(x)["res5"]
        single = resnet(x[:1])["res5"]
    torch.testing.assert_close(both[:1], single, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_give_torchvision_features(depth):
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    ours = ResNet(depth=depth, freeze_at=0)
    ours.load_state_dict(convert_torchvision_resnet(tv.state_dict()), strict=True)
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        feats = ours(x)
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        for k, layer in enumerate([tv.layer1, tv.layer2, tv.layer3, tv.layer4], start=2):
            y = layer(y)
            # float32 noise grows with depth: compare relative to the feature scale
            assert (feats[f"res{k}"] - y).abs().max() <= 1e-4 * y.abs().max()


def test_fpn_matches_torchvision_fpn():
    backbone = build_resnet_fpn_backbone(depth=18, res2_channels=64)
    tv_fpn = FeaturePyramidNetwork([64, 128, 256, 512], 256, extra_blocks=LastLevelMaxPool())
    mapped = {}
    for lv in (2, 3, 4, 5):
        for p in ("weight", "bias"):
            mapped[f"inner_blocks.{lv - 2}.0.{p}"] = getattr(
                backbone, f"fpn_lateral{lv}"
            ).state_dict()[p]
            mapped[f"layer_blocks.{lv - 2}.0.{p}"] = getattr(
                backbone, f"fpn_output{lv}"
            ).state_dict()[p]
    tv_fpn.load_state_dict(mapped)
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        ours = backbone(x)
        bottom_up = backbone.bottom_up(x)
        theirs = tv_fpn({k: bottom_up[k] for k in ("res2", "res3", "res4", "res5")})
    assert list(ours) == ["p2", "p3", "p4", "p5", "p6"]
    for ours_v, theirs_v in zip(ours.values(), theirs.values(), strict=True):
        torch.testing.assert_close(ours_v, theirs_v, rtol=1e-4, atol=1e-4)
    assert backbone.size_divisibility == 32
    assert ours["p6"].shape == (2, 256, 1, 1)


def test_invalid_depth_is_a_value_error():
    with pytest.raises(ValueError, match="depth 42"):
        ResNet(depth=42)


def test_trainable_norms_for_training_from_scratch():
    resnet = ResNet(depth=18, freeze_at=2, norm="BN", res2_channels=16, stem_channels=16)
    assert isinstance(resnet.res3[0].conv1.norm, torch.nn.BatchNorm2d)
    # frozen stages get FrozenBN, as in detectron2
    assert type(resnet.res2[0].conv1.norm).__name__ == "FrozenBatchNorm2d"
    assert type(resnet.stem.conv1.norm).__name__ == "FrozenBatchNorm2d"
    gn = ResNet(depth=18, freeze_at=0, norm="GN", res2_channels=16, stem_channels=16)
    assert isinstance(gn.res5[1].conv2.norm, torch.nn.GroupNorm)
    assert gn(torch.randn(1, 3, 32, 32))["res5"].shape == (1, 128, 1, 1)
    with pytest.raises(ValueError, match="SyncBN"):
        ResNet(depth=18, norm="SyncBN")
