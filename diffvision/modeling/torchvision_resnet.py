"""torchvision's ResNets as a multi-scale backbone, in torchvision's own parameter layout.

:class:`TorchvisionResNet` wraps ``torchvision.models.resnet{18,34,50,101}`` (no copy of the
network): its modules are ``stem`` (conv1, bn1, relu), ``layer1`` (max pool, layer1),
``layer2``, ``layer3``, ``layer4``, so a torchvision ImageNet state dict maps onto it by renaming
``conv1.``/``bn1.`` to ``stem.0.``/``stem.1.`` and ``layer1.`` to ``layer1.1.``. Trainable
batch norms, torchvision's initialisation. DDeP's UNet encoder uses it (``MODEL.DDEP.ENCODER:
resnet50``); :class:`~diffvision.modeling.resnet.ResNet` is the detectron2-layout ResNet.

Shapes: ``forward((B, 3, H, W))`` returns ``{name: map}`` for the requested names, fine to
coarse, at strides ``stem`` 2, ``layer1`` 4, ``layer2`` 8, ``layer3`` 16, ``layer4`` 32 (ResNet-50:
64, 256, 512, 1024, 2048 channels; ResNet-18: 64, 64, 128, 256, 512).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import nn

__all__ = ["TORCHVISION_RESNETS", "TorchvisionResNet"]

TORCHVISION_RESNETS = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101"}
_LEVELS = ("stem", "layer1", "layer2", "layer3", "layer4")


class TorchvisionResNet(nn.ModuleDict):
    """The stages of a torchvision ResNet up to the deepest requested feature.

    Args:
        depth: 18, 34, 50 or 101.
        out_features: which of ``stem``, ``layer1`` .. ``layer4`` ``forward`` returns.
    """

    def __init__(self, *, depth: int = 50, out_features: Sequence[str] = _LEVELS) -> None:
        if depth not in TORCHVISION_RESNETS:
            raise ValueError(f"depth must be one of {sorted(TORCHVISION_RESNETS)}, got {depth!r}")
        unknown = [f for f in out_features if f not in _LEVELS]
        if unknown or not out_features:
            raise ValueError(f"out_features {list(out_features)} must be among {_LEVELS}")
        net = getattr(torchvision.models, TORCHVISION_RESNETS[depth])(weights=None)
        stages = {
            "stem": nn.Sequential(net.conv1, net.bn1, net.relu),
            "layer1": nn.Sequential(net.maxpool, net.layer1),
            "layer2": net.layer2,
            "layer3": net.layer3,
            "layer4": net.layer4,
        }
        deepest = max(_LEVELS.index(f) for f in out_features)
        super().__init__({name: stages[name] for name in _LEVELS[: deepest + 1]})
        self.out_features = tuple(f for f in _LEVELS if f in out_features)
        expansion = 4 if depth >= 50 else 1
        channels = (64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)
        self._out_channels = dict(zip(_LEVELS, channels, strict=True))
        self._out_strides = {name: 2 ** (i + 1) for i, name in enumerate(_LEVELS)}

    @property
    def out_channels(self) -> dict[str, int]:
        return {f: self._out_channels[f] for f in self.out_features}

    @property
    def out_strides(self) -> dict[str, int]:
        return {f: self._out_strides[f] for f in self.out_features}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {}
        for name, stage in self.items():
            x = stage(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs
