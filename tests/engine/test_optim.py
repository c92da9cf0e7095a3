import pytest
import torch
from torch import nn

from diffvision.engine.optim import make_optimizer, make_param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _lookup(groups, param):
    return next(g for g in groups if any(p is param for p in g["params"]))


def test_groups_apply_backbone_multiplier_norm_and_bias_decay_and_skip_frozen():
    net = Net()
    groups = make_param_groups(
        net, base_lr=1.0, weight_decay=0.1, weight_decay_norm=0.0, backbone_multiplier=0.5,
        bias_lr_factor=2.0, weight_decay_bias=0.01,
    )  # fmt: skip
    assert _lookup(groups, net.backbone[0].weight)["lr"] == 0.5
    assert _lookup(groups, net.backbone[0].bias)["lr"] == 1.0  # 0.5 × bias factor 2
    assert _lookup(groups, net.backbone[0].bias)["weight_decay"] == 0.01
    assert _lookup(groups, net.backbone[1].weight)["weight_decay"] == 0.0
    assert _lookup(groups, net.head.weight)["lr"] == 1.0
    assert _lookup(groups, net.head.weight)["weight_decay"] == 0.1
    params = [p for g in groups for p in g["params"]]
    assert all(p is not net.frozen.weight for p in params)
    assert len(params) == 6


def test_optimizer_names():
    groups = make_param_groups(nn.Linear(2, 2), base_lr=0.1, weight_decay=0.0)
    assert isinstance(make_optimizer(groups, name="ADAMW", base_lr=0.1), torch.optim.AdamW)
    assert isinstance(make_optimizer(groups, name="sgd", base_lr=0.1), torch.optim.SGD)
    with pytest.raises(ValueError, match="Unknown SOLVER.OPTIMIZER 'LION'"):
        make_optimizer(groups, name="LION", base_lr=0.1)
