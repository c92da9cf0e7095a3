from __future__ import annotations

import torch
import torch.nn.functional as F

from diffvision.diffusion.schedule import get_schedule
from diffvision.modeling.unet import UNet
from projects.segmentation.pixel_mlp.features import (
    DDPMFeatureExtractor,
    RawPixelExtractor,
    collect_training_pixels,
    gather_pixel_features,
    pixel_grid,
)


def _tiny_unet():
    torch.manual_seed(0)
    return UNet(
        image_size=32,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
    )


def test_gather_equals_upsample_then_index():
    maps = [torch.randn(1, 4, 5, 7), torch.randn(1, 2, 16, 24), torch.randn(1, 3, 32, 48)]
    size = (32, 48)
    full = torch.cat(
        [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], dim=1
    )[0]  # (9, 32, 48)
    coords = pixel_grid(*size)
    gathered = gather_pixel_features(maps, coords, size=size)
    torch.testing.assert_close(gathered, full.reshape(9, -1).T, rtol=1e-5, atol=1e-5)
    subset = coords[torch.randperm(len(coords))[:50]]
    torch.testing.assert_close(
        gather_pixel_features(maps, subset, size=size),
        full[:, subset[:, 0], subset[:, 1]].T,
        rtol=1e-5,
        atol=1e-5,
    )


def test_ddpm_extractor_shared_noise_and_dims():
    unet = _tiny_unet()
    ext = DDPMFeatureExtractor(
        unet=unet, schedule=get_schedule("linear"), steps=(10, 50), blocks=(0, 2), image_size=32
    )
    ext.train()
    assert not ext.unet.training and not any(p.requires_grad for p in ext.unet.parameters())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    maps = ext(x)
    assert len(maps) == 4  # step-major: (t10: b0, b2), (t50: b0, b2)
    assert maps[0].shape[1] == maps[2].shape[1] and maps[1].shape[1] == maps[3].shape[1]
    again = ext(x)
    for a, b in zip(maps, again):  # one fixed ε: deterministic
        torch.testing.assert_close(a, b)
    # The same ε reaches the UNet at every step: reproduce step 50 by hand.
    from diffvision.diffusion.forward import add_noise

    x_t = add_noise(ext.schedule, x, ext.noise, torch.tensor([50]))
    ref = unet.extract_features(x_t, torch.tensor([50]), (0, 2))
    torch.testing.assert_close(maps[2], ref[0])


def test_collect_training_pixels_subsamples_labeled_pixels():
    images = [torch.rand(3, 8, 8) * 2 - 1 for _ in range(3)]
    masks = [torch.randint(0, 3, (8, 8)) for _ in range(3)]
    masks[0][:4] = 255
    feats, labels = collect_training_pixels(
        RawPixelExtractor(), images, masks, pixels_per_image=20, dtype=torch.float16
    )
    assert feats.shape == (60, 3) and feats.dtype == torch.float16 and labels.shape == (60,)
    assert (labels != 255).all()
    all_feats, all_labels = collect_training_pixels(
        RawPixelExtractor(), images, masks, pixels_per_image=0, dtype=torch.float32
    )
    assert all_feats.shape == (32 + 64 + 64, 3)
    # Raw features are the pixel's RGB at its label position.
    flat = (masks[0].reshape(-1) != 255).nonzero().squeeze(1)
    torch.testing.assert_close(all_feats[:32], images[0].reshape(3, -1)[:, flat].T)
