"""Norm folding of the reduced-precision copies (:mod:`diffvision.modeling.precision`)."""

import pytest
import torch
from torch import nn

from diffvision.modeling.precision import fold_sibling_norms, reduced_copy


def _randomize_norm_statistics(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial statistics and affine parameters in every batch norm (a fresh model's are
    0 / 1, which folding would reproduce even if it were wrong)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "running_var") and m.running_var is not None:
            c = m.running_var.numel()
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


def _norms(module: nn.Module) -> list[str]:
    return [type(m).__name__ for m in module.modules() if "BatchNorm" in type(m).__name__]


def test_timm_efficientnet_lite_folds_every_frozen_norm_into_its_conv():
    timm = pytest.importorskip("timm")
    from timm.layers import freeze_batch_norm_2d

    model = freeze_batch_norm_2d(
        timm.create_model("tf_efficientnet_lite0", features_only=True, pretrained=False)
    ).eval()
    _randomize_norm_statistics(model)
    count = len(_norms(model))
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    folded = reduced_copy(model, torch.float32)  # folding only: the same function in float32
    assert _norms(folded) == [] and count > 40
    for want, got in zip(model(x), folded(x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert _norms(model), "the original keeps its norms"


def test_a_conv_followed_by_an_eval_batch_norm_folds_and_a_mismatched_pair_does_not():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(6)).eval()  # fmt: skip
    _randomize_norm_statistics(net)
    x = torch.randn(1, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    want = net[:4](x)
    assert fold_sibling_norms(net) == 1
    assert isinstance(net[1], nn.Identity) and isinstance(net[4], nn.BatchNorm2d)
    torch.testing.assert_close(net[:4](x), want, rtol=1e-5, atol=1e-5)


def test_a_training_mode_batch_norm_is_not_folded():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
    assert fold_sibling_norms(net) == 0 and isinstance(net[1], nn.BatchNorm2d)
