"""ResNet with frozen batch norm and detectron2's module names.

The module tree reproduces detectron2's ``ResNet`` (``detectron2/modeling/backbone/resnet.py``),
so its state_dict keys are detectron2's: ``stem.conv1.weight``, ``stem.conv1.norm.{weight,bias,
running_mean,running_var}``, ``res{2..5}.{i}.conv{1,2,3}.weight`` (+ ``.norm.*``) and
``res{2..5}.0.shortcut.*``.
Official DiffusionDet checkpoints store these under ``backbone.bottom_up.``.

Differences from torchvision's ``resnet50``: key names only. Strides sit on the 3x3 conv
(``STRIDE_IN_1X1: False``, torchvision style), every norm is a ``FrozenBatchNorm2d`` (eps 1e-5, no
``num_batches_tracked`` key), and :func:`convert_torchvision_resnet` maps torchvision key names to
these (detectron2 ``tools/convert-torchvision-to-d2.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = [
    "ConvNorm",
    "set_norm_folding",
    "BasicStem",
    "BasicBlock",
    "BottleneckBlock",
    "ResNet",
    "RESNET_DEPTHS",
    "NORMS",
    "convert_torchvision_resnet",
]

# depth -> (block kind, blocks per stage res2..res5)
RESNET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def foldable_norm(norm: nn.Module | None) -> bool:
    """Whether ``norm`` is a fixed per-channel affine map at inference, which
    :func:`folded_conv` can fold into the convolution before it: a frozen batch norm
    (torchvision's, or timm's ``FrozenBatchNorm2d`` / ``FrozenBatchNormAct2d``, whose activation
    stays behind) or a ``BatchNorm2d`` in eval mode with running statistics, with affine
    parameters."""
    frozen = isinstance(norm, FrozenBatchNorm2d) or type(norm).__name__ in (
        "FrozenBatchNorm2d",
        "FrozenBatchNormAct2d",
    )
    running = isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.track_running_stats
    return (frozen or running) and norm.weight is not None and norm.bias is not None


def folded_conv(
    weight: torch.Tensor, bias: torch.Tensor | None, norm: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of the convolution equal to ``norm(conv(x))`` for a
    :func:`foldable_norm`: ``W * s`` and ``(b - mean) * s + beta`` with
    ``s = gamma / sqrt(var + eps)`` per output channel."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # (C_out,)
    shift = norm.bias - norm.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    return weight * scale[:, None, None, None], shift


class ConvNorm(nn.Conv2d):
    """``nn.Conv2d`` + optional norm held as the child ``norm`` (detectron2 ``Conv2d``).

    Keeping the norm as a child of the conv gives the keys ``conv1.weight`` and ``conv1.norm.*``.

    With ``fold_norm = True`` (a plain attribute, not state: keys and checkpoints are unchanged)
    a ``FrozenBatchNorm2d``, or a ``BatchNorm2d`` in eval mode, is folded into the convolution at
    every call: ``conv(x, W * s) + (b - mean * s)`` with ``s = gamma / sqrt(var + eps)``. The
    folded weights are recomputed from the live parameters each call (cost O(#weights), no cache
    that could go stale after ``load_state_dict``), and the output equals ``norm(conv(x))`` up to
    float rounding. Gradients flow to the conv weight as without folding.
    """

    fold_norm: bool = False

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm

    def _foldable(self) -> bool:
        return foldable_norm(self.norm)

    def folded_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W * s, b - mean * s + conv bias * s): the conv equal to conv + norm."""
        return folded_conv(self.weight, self.bias, self.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fold_norm and self._foldable():
            weight, bias = self.folded_weight_bias()
            if x.is_contiguous(memory_format=torch.channels_last):
                weight = weight.contiguous(memory_format=torch.channels_last)
            return self._conv_forward(x, weight, bias)
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return x


def set_norm_folding(module: nn.Module, enabled: bool) -> None:
    """Switch :class:`ConvNorm` norm folding on or off for every ConvNorm inside ``module``."""
    for m in module.modules():
        if isinstance(m, ConvNorm):
            m.fold_norm = bool(enabled)


NORMS = ("FrozenBN", "BN", "GN")


def _make_norm(norm: str, channels: int) -> nn.Module:
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "GN":
        return nn.GroupNorm(min(32, channels), channels)
    raise ValueError(f"ResNet norm {norm!r} is not one of {NORMS}")


def _frozen_copy(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(frozen, name).copy_(getattr(bn, name).detach())
    return frozen


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0) -> ConvNorm:
    conv = ConvNorm(
        in_ch,
        out_ch,
        kernel,
        stride=stride,
        padding=padding,
        bias=False,
        norm=FrozenBatchNorm2d(out_ch),
    )
    # detectron2 c2_msra_fill: He-normal, fan_out, ReLU gain.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class BasicStem(nn.Module):
    """7x7/2 conv + FrozenBN + ReLU (:meth:`features`, stride 2) + 3x3/2 max pool:
    (B, 3, H, W) -> (B, C, H/4, W/4)."""

    def __init__(self, *, in_channels: int = 3, out_channels: int = 64) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = _conv(in_channels, out_channels, 7, stride=2, padding=3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-2 map before the max pool, (B, C, H/2, W/2)."""
        return F.relu_(self.conv1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.features(x), kernel_size=3, stride=2, padding=1)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34)."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.shortcut = (
            _conv(in_channels, out_channels, 1, stride=stride)
            if in_channels != out_channels or stride != 1
            else None
        )
        self.conv1 = _conv(in_channels, out_channels, 3, stride=stride, padding=1)
        self.conv2 = _conv(out_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 with a residual (ResNet-50/101).

    The stride sits on the 3x3 (torchvision, ``STRIDE_IN_1X1: False``, DiffusionDet) or on the
    first 1x1 (MSRA, ``stride_in_1x1=True``).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        stride: int = 1,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        self.shortcut = (
            _conv(in_channels, out_channels, 1, stride=stride)
            if in_channels != out_channels
            else None
        )
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv(in_channels, bottleneck_channels, 1, stride=stride_1x1)
        self.conv2 = _conv(
            bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, padding=1
        )
        self.conv3 = _conv(bottleneck_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


class ResNet(nn.Module):
    """ResNet-{18,34,50,101,152} returning ``stem`` (stride 2, before the max pool) and
    ``res2..res5`` with FrozenBN in every stage.

    Args:
        depth: one of :data:`RESNET_DEPTHS`.
        freeze_at: 0 trains everything, 1 freezes the stem, 2 the stem and ``res2`` (detectron2
            ``BACKBONE.FREEZE_AT``; DiffusionDet uses 2), up to 5.
        out_features: which of ``stem``, ``res2..res5`` ``forward`` returns.
        stride_in_1x1: bottleneck stride on the first 1x1 (MSRA) instead of the 3x3 (torchvision).
        norm: ``FrozenBN`` (detectron2 default, all official configs), or trainable ``BN`` /
            ``GN`` for training from scratch (toy configs: a random-init network with FrozenBN has
            no normalisation at all). BN layers of frozen stages become FrozenBN, as in detectron2.
        stem_channels: stem output channels (64).
        res2_channels: ``res2`` output channels, doubled per stage (default 64 for basic blocks,
            256 for bottlenecks; smaller values give the narrow networks of toy configs).

    Input (B, 3, H, W) normalised; output ``{"res{k}": (B, C_k, H/2^k, W/2^k)}``.
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        freeze_at: int = 2,
        out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"),
        stride_in_1x1: bool = False,
        stem_channels: int = 64,
        res2_channels: int | None = None,
        norm: str = "FrozenBN",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"ResNet norm {norm!r} is not one of {NORMS}")
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth {depth!r} is not one of {sorted(RESNET_DEPTHS)}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in [0, 5], got {freeze_at!r}")
        names = ("res2", "res3", "res4", "res5")
        for name in out_features:
            if name not in ("stem", *names):
                raise ValueError(f"ResNet out_feature {name!r} is not one of {('stem', *names)}")
        kind, num_blocks = RESNET_DEPTHS[depth]
        self.depth = depth
        self.out_features = tuple(out_features)
        if res2_channels is None:
            res2_channels = 64 if kind == "basic" else 256
        if kind == "bottleneck" and res2_channels % 4:
            raise ValueError(f"res2_channels must be a multiple of 4, got {res2_channels!r}")
        self.stem = BasicStem(out_channels=stem_channels)
        self._out_channels: dict[str, int] = {"stem": stem_channels}
        self._out_strides: dict[str, int] = {"stem": 2}
        in_ch = stem_channels
        for idx, (name, n) in enumerate(zip(names, num_blocks, strict=True)):
            out_ch = res2_channels * 2**idx
            blocks = []
            for i in range(n):
                stride = 2 if (i == 0 and idx > 0) else 1
                if kind == "basic":
                    block = BasicBlock(in_channels=in_ch, out_channels=out_ch, stride=stride)
                else:
                    block = BottleneckBlock(
                        in_channels=in_ch,
                        out_channels=out_ch,
                        bottleneck_channels=res2_channels // 4 * 2**idx,
                        stride=stride,
                        stride_in_1x1=stride_in_1x1,
                    )
                blocks.append(block)
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*blocks))
            self._out_channels[name] = out_ch
            self._out_strides[name] = 2 ** (idx + 2)
        if norm != "FrozenBN":
            for m in self.modules():
                if isinstance(m, ConvNorm):
                    m.norm = _make_norm(norm, m.out_channels)
        self.freeze(freeze_at)

    @property
    def out_channels(self) -> dict[str, int]:
        """Channels of each returned feature."""
        return {k: self._out_channels[k] for k in self.out_features}

    @property
    def out_strides(self) -> dict[str, int]:
        """Stride of each returned feature w.r.t. the input."""
        return {k: self._out_strides[k] for k in self.out_features}

    def freeze(self, freeze_at: int) -> None:
        """``requires_grad=False`` on the stem (``freeze_at >= 1``) and stages ``res2..`` below."""
        modules = [self.stem, self.res2, self.res3, self.res4, self.res5]
        for idx, module in enumerate(modules, start=1):
            if freeze_at >= idx:
                for p in module.parameters():
                    p.requires_grad_(False)
                for m in module.modules():
                    if isinstance(m, ConvNorm) and isinstance(m.norm, nn.BatchNorm2d):
                        m.norm = _frozen_copy(m.norm)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"ResNet takes (B, C, H, W) inputs, got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem.features(x)
        if "stem" in self.out_features:
            outputs["stem"] = x
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        for name in ("res2", "res3", "res4", "res5"):
            if len(outputs) == len(self.out_features):
                break  # later stages are not needed
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs


_TV_NUM = re.compile(r"^layer([1-4])\.")


def convert_torchvision_resnet(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ``resnet*`` state_dict to detectron2 / :class:`ResNet` names.

    ``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``; ``layer{k}`` -> ``res{k+1}``;
    ``bn{j}`` -> ``conv{j}.norm``; ``downsample.0/1`` -> ``shortcut``/``shortcut.norm``
    (detectron2 ``tools/convert-torchvision-to-d2.py``).
    ``fc.*`` and ``num_batches_tracked`` are dropped.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        if key.startswith("conv1."):
            new = "stem." + key
        elif key.startswith("bn1."):
            new = "stem.conv1.norm." + key[len("bn1.") :]
        elif _TV_NUM.match(key):
            new = _TV_NUM.sub(lambda m: f"res{int(m.group(1)) + 1}.", key)
            new = re.sub(r"\.bn([123])\.", r".conv\1.norm.", new)
            new = new.replace(".downsample.0.", ".shortcut.").replace(
                ".downsample.1.", ".shortcut.norm."
            )
        else:
            raise ValueError(f"unexpected key {key!r} in a torchvision ResNet state_dict")
        out[new] = value
    return out
