"""Feature Pyramid Network with detectron2's module names (Lin et al., 2017, arXiv:1612.03144).

Reproduces detectron2's ``FPN`` with ``NORM: ""`` (convs with bias), ``FUSE_TYPE: sum`` and
``LastLevelMaxPool``: keys are ``fpn_lateral{l}.{weight,bias}``, ``fpn_output{l}.{weight,bias}``
and ``bottom_up.*`` (the official DiffusionDet checkpoints' ``backbone.*`` keys), with
``l = log2(stride)`` of the input level.
torchvision's ``FeaturePyramidNetwork`` computes the same maths under other names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FPN", "build_resnet_fpn_backbone", "build_swin_fpn_backbone"]


def _c2_xavier_fill(conv: nn.Conv2d) -> None:
    # detectron2 c2_xavier_fill (Caffe2 XavierFill = kaiming_uniform with a=1), zero bias.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class FPN(nn.Module):
    """Top-down pyramid over a bottom-up backbone: ``p{l}`` per input level plus a p6.

    Args:
        bottom_up: module returning a dict of features; it must expose ``out_channels`` and
            ``out_strides`` dicts keyed by feature name.
        in_features: bottom-up feature names, fine to coarse (e.g. ``res2..res5``).
        out_channels: channels of every pyramid level (256 in DiffusionDet).

    ``forward((B, 3, H, W))`` with H, W multiples of :attr:`size_divisibility` returns
    ``{"p2": (B, C, H/4, W/4), ..., "p5": (B, C, H/32, W/32), "p6": (B, C, H/64, W/64)}``.
    """

    def __init__(
        self, *, bottom_up: nn.Module, in_features: tuple[str, ...], out_channels: int = 256
    ) -> None:
        super().__init__()
        strides = bottom_up.out_strides
        channels = bottom_up.out_channels
        for name in in_features:
            if name not in strides:
                raise ValueError(f"FPN in_feature {name!r} is not one of {sorted(strides)}")
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up
        self.levels = [int(math.log2(strides[f])) for f in self.in_features]
        for prev, cur in zip(self.levels[:-1], self.levels[1:], strict=True):
            if cur != prev + 1:
                raise ValueError(f"FPN needs consecutive strides, got levels {self.levels}")
        for level, name in zip(self.levels, self.in_features, strict=True):
            lateral = nn.Conv2d(channels[name], out_channels, 1)
            output = nn.Conv2d(out_channels, out_channels, 3, padding=1)
            _c2_xavier_fill(lateral)
            _c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
        self.size_divisibility = strides[self.in_features[-1]]
        top = self.levels[-1] + 1
        self.out_features = tuple(f"p{lv}" for lv in self.levels) + (f"p{top}",)
        self.out_channels = {f: out_channels for f in self.out_features}
        self.out_strides = {f"p{lv}": 2**lv for lv in [*self.levels, top]}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bottom_up = self.bottom_up(x)
        results = []
        prev = None
        for level, name in zip(self.levels[::-1], self.in_features[::-1], strict=True):
            lateral = getattr(self, f"fpn_lateral{level}")(bottom_up[name])
            if prev is not None:
                lateral = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = lateral
            results.insert(0, getattr(self, f"fpn_output{level}")(prev))
        # LastLevelMaxPool: p6 is a stride-2 subsample of p5.
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return dict(zip(self.out_features, results, strict=True))


def build_resnet_fpn_backbone(
    *,
    depth: int = 50,
    freeze_at: int = 2,
    in_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"),
    out_channels: int = 256,
    stride_in_1x1: bool = False,
    stem_channels: int = 64,
    res2_channels: int | None = None,
    norm: str = "FrozenBN",
) -> FPN:
    """ResNet-FPN as in detectron2 ``build_resnet_fpn_backbone`` (FrozenBN in every stage)."""
    from diffvision.modeling.resnet import ResNet

    bottom_up = ResNet(
        depth=depth,
        freeze_at=freeze_at,
        out_features=tuple(in_features),
        stride_in_1x1=stride_in_1x1,
        stem_channels=stem_channels,
        res2_channels=res2_channels,
        norm=norm,
    )
    return FPN(bottom_up=bottom_up, in_features=in_features, out_channels=out_channels)


def build_swin_fpn_backbone(
    *,
    size: str = "B-22k",
    in_features: tuple[str, ...] = ("swin0", "swin1", "swin2", "swin3"),
    out_channels: int = 256,
    drop_path_rate: float | None = None,
    use_checkpoint: bool = False,
) -> FPN:
    """Swin-FPN as in DiffusionDet's ``build_swintransformer_fpn_backbone``
    (``diffusiondet/swintransformer.py``)."""
    from diffvision.modeling.swin import SwinTransformer, swin_config

    kwargs = swin_config(size)
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    out_indices = tuple(int(f.removeprefix("swin")) for f in in_features)
    bottom_up = SwinTransformer(out_indices=out_indices, use_checkpoint=use_checkpoint, **kwargs)
    return FPN(bottom_up=bottom_up, in_features=in_features, out_channels=out_channels)
