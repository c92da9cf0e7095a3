"""One backbone registry for every task: a backbone registered once is DiffusionDet's FPN
bottom-up and DDeP's UNet encoder alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import projects  # noqa: F401  (registers the tasks)
from diffvision.engine.defaults import load_config
from diffvision.errors import UnknownNameError
from diffvision.modeling.backbones import build_backbone, register_backbone, registered_backbones
from projects.detection.build import build_backbone as build_detection_backbone
from projects.detection.build import build_model as build_detection_model
from projects.segmentation.ddep.build import build_ddep_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class TinyConvNet(nn.Module):
    """Five stride-2 convolutions: ``s1`` .. ``s5`` at strides 2 .. 32, 8 channels each."""

    def __init__(self, out_features=None):
        super().__init__()
        self.stages = nn.ModuleList(nn.Conv2d(3 if i == 0 else 8, 8, 3, 2, 1) for i in range(5))
        self.out_features = tuple(out_features or [f"s{i + 1}" for i in range(5)])
        self.out_channels = {f: 8 for f in self.out_features}
        self.out_strides = {f: 2 ** int(f[1:]) for f in self.out_features}

    def forward(self, x):
        out = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if f"s{i + 1}" in self.out_features:
                out[f"s{i + 1}"] = x
        return out


@register_backbone("tiny_convnet_for_tests")
def build_tiny_convnet(cfg, *, out_features=None):
    return TinyConvNet(out_features)


def test_the_shipped_backbones_are_registered():
    assert {"resnet", "torchvision_resnet", "swin", "timm"} <= set(registered_backbones())


def test_a_registered_backbone_serves_the_detection_fpn(tmp_path):
    opts = ["OUTPUT_DIR", str(tmp_path), "MODEL.BACKBONE.NAME", "tiny_convnet_for_tests",
            "MODEL.FPN.IN_FEATURES", "['s2', 's3', 's4', 's5']"]  # fmt: skip
    cfg = load_config(str(CONFIGS / "diffdet_tiny.yaml"), opts)
    fpn = build_detection_backbone(cfg)
    assert isinstance(fpn.bottom_up, TinyConvNet)
    maps = fpn(torch.randn(1, 3, 64, 64))
    assert {k: v.shape[-1] for k, v in maps.items()} == {"p2": 16, "p3": 8, "p4": 4, "p5": 2,
                                                         "p6": 1}  # fmt: skip
    assert isinstance(build_detection_model(cfg).backbone.bottom_up, TinyConvNet)


def test_a_registered_backbone_serves_the_ddep_unet(tmp_path):
    opts = ["OUTPUT_DIR", str(tmp_path), "MODEL.DDEP.ENCODER", "tiny_convnet_for_tests"]
    model = build_ddep_model(load_config(str(CONFIGS / "ddep_tiny.yaml"), opts))
    assert isinstance(model.network.backbone, TinyConvNet)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert model.eval()({"image": x, "seed": torch.tensor([1, 2])})[0]["noise_pred"].shape == (
        3, 32, 32)  # fmt: skip


def test_the_detectron2_resnet_is_a_unet_encoder_too(tmp_path):
    opts = ["OUTPUT_DIR", str(tmp_path), "MODEL.DDEP.ENCODER", "resnet",
            "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
            "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.NORM", "BN"]  # fmt: skip
    model = build_ddep_model(load_config(str(CONFIGS / "ddep_tiny.yaml"), opts))
    assert model.network.backbone.out_strides == {"stem": 2, "res2": 4, "res3": 8, "res4": 16,
                                                  "res5": 32}  # fmt: skip
    assert model.network(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_an_unknown_backbone_names_the_key_and_the_registered_ones(tmp_path):
    cfg = load_config(str(CONFIGS / "ddep_tiny.yaml"), ["OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(UnknownNameError, match=r"MODEL.DDEP.ENCODER 'resnt'.*Did you mean: resnet"):
        build_backbone(cfg, "resnt", what="MODEL.DDEP.ENCODER")
