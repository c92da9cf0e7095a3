"""Per-pixel features from a frozen DDPM UNet (Baranchuk et al., ICLR 2022), memory-bounded.

"Label-Efficient Semantic Segmentation with Diffusion Models", arXiv 2112.03126;
``yandex-research/ddpm-segmentation``@9a13776 (``shared/reference/segmentation.md`` §B.3).

Notation: x ∈ [-1, 1]^{3×S×S} an image, ε one fixed noise map shared by every image and every
step (``share_noise``), t ∈ ``steps`` (default 50, 150, 250), ``blocks`` decoder blocks
(default 5, 6, 7, 8, 12 of the 256² ADM UNet).

1. x_t = √ᾱ_t x + √(1 − ᾱ_t) ε  (core ``add_noise``; integer t, no rescaling).
2. A_{t,b} = output of ``output_blocks[b]`` for the UNet run on (x_t, t), shape (C_b, h_b, w_b).
3. The feature of pixel (i, j) of the H×W label map is the concatenation, step-major
   ([t₁: b₁ … b_k], [t₂: …], …), of every A_{t,b} bilinearly upsampled to H×W
   (``align_corners=False``) and read at (i, j): 8448 = 3 × (1024 + 512 + 512 + 512 + 256).

Memory. The reference upsamples every map to 256² and keeps all pixels in float32: 2.06 GiB per
image, ~110 GB for 50 images (§B.11). Here the low-resolution maps are kept as they are
(≈ 30 MB per image for the default set) and only the *requested* pixels are interpolated,
with ``grid_sample`` at the exact source coordinates F.interpolate uses (pixel centres,
border-clamped): :func:`gather_pixel_features` equals upsample-then-index, for any subset of
pixels. Training stores a random subset of labeled pixels per image in float16; inference walks
an image in pixel chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffvision.diffusion.forward import add_noise
from diffvision.diffusion.schedule import NoiseSchedule
from diffvision.utils.seeding import seeded_generator

__all__ = [
    "DDPMFeatureExtractor",
    "RawPixelExtractor",
    "collect_training_pixels",
    "gather_pixel_features",
    "pixel_grid",
]

logger = logging.getLogger(__name__)


def pixel_grid(height: int, width: int) -> torch.Tensor:
    """All pixel coordinates ``(H·W, 2)`` as (row, col), row-major."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def gather_pixel_features(
    maps: Sequence[torch.Tensor], coords: torch.Tensor, *, size: tuple[int, int]
) -> torch.Tensor:
    """Bilinear features of chosen pixels, as if each map were upsampled to ``size`` first.

    For output pixel (i, j) of an ``H×W`` grid and a map of size ``h×w``, ``F.interpolate(...,
    mode="bilinear", align_corners=False)`` reads the source point ((i + ½)·h/H − ½,
    (j + ½)·w/W − ½), clamped at 0. ``grid_sample`` with normalised coordinate
    (2(i + ½)/H − 1) and ``align_corners=False``, ``padding_mode="border"`` reads the same point.

    Args:
        maps: feature maps ``(1, C_k, h_k, w_k)``.
        coords: ``(N, 2)`` long (row, col) in the ``size`` grid.
        size: ``(H, W)`` of the label map.

    Returns:
        ``(N, Σ C_k)`` float32, channels in the order of ``maps``.
    """
    height, width = size
    coords = coords.to(maps[0].device)
    y = (2.0 * (coords[:, 0].float() + 0.5) / height) - 1.0
    x = (2.0 * (coords[:, 1].float() + 0.5) / width) - 1.0
    grid = torch.stack([x, y], dim=-1).view(1, 1, -1, 2)  # (1, 1, N, 2) as (x, y)
    out = []
    for fmap in maps:
        if fmap.shape[0] != 1:
            raise ValueError(f"maps must have batch size 1, got {tuple(fmap.shape)}")
        sampled = F.grid_sample(
            fmap.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )  # (1, C, 1, N)
        out.append(sampled[0, :, 0].transpose(0, 1))
    return torch.cat(out, dim=1)


class DDPMFeatureExtractor(nn.Module):
    """Frozen UNet noised at fixed steps with one shared ε; returns low-resolution maps.

    Args:
        unet: a :class:`diffvision.modeling.unet.UNet` (trained, loaded, or random for the
            untrained baseline); put in eval mode and frozen here.
        schedule: the UNet's training schedule (guided-diffusion: linear, T = 1000).
        steps: timesteps t (0-based indices of ``schedule``).
        blocks: indices of ``unet.output_blocks``.
        image_size: side S of the square UNet input.
        noise_seed: seed of the shared ε ``(1, 3, S, S)`` (reference: 0).
    """

    def __init__(
        self,
        *,
        unet: nn.Module,
        schedule: NoiseSchedule,
        steps: Sequence[int] = (50, 150, 250),
        blocks: Sequence[int] = (5, 6, 7, 8, 12),
        image_size: int = 256,
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        if not steps or not blocks:
            raise ValueError(f"steps {steps} and blocks {blocks} must be non-empty")
        bad = [t for t in steps if not 0 <= t < schedule.num_timesteps]
        if bad:
            raise ValueError(f"steps {bad} outside [0, {schedule.num_timesteps})")
        self.unet = unet.eval().requires_grad_(False)
        self.schedule = schedule
        self.steps = tuple(int(t) for t in steps)
        self.blocks = tuple(int(b) for b in blocks)
        self.image_size = image_size
        generator = seeded_generator(noise_seed)
        self.register_buffer(
            "noise", torch.randn((1, 3, image_size, image_size), generator=generator), False
        )

    def train(self, mode: bool = True) -> DDPMFeatureExtractor:
        """The UNet stays in eval mode (no dropout) whatever the caller asks."""
        super().train(mode)
        self.unet.eval()
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder maps of one image.

        Args:
            x: ``(1, 3, S, S)`` image in [-1, 1].

        Returns:
            ``len(steps) · len(blocks)`` float32 maps ``(1, C_b, h_b, w_b)``, step-major.
        """
        if x.shape[0] != 1 or tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"expected one {self.image_size}x{self.image_size} image, got {tuple(x.shape)}"
            )
        schedule = self.schedule.to(x.device)
        maps = []
        for t in self.steps:
            t_batch = torch.full((1,), t, dtype=torch.long, device=x.device)
            x_t = add_noise(schedule, x, self.noise.to(x.device), t_batch)
            maps += self.unet.extract_features(x_t, t_batch, self.blocks)
        return maps


class RawPixelExtractor(nn.Module):
    """Baseline: the pixel's own RGB value in [-1, 1] (3 features)."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x.float()]


@torch.no_grad()
def collect_training_pixels(
    extractor: nn.Module,
    images: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    *,
    pixels_per_image: int = 4096,
    ignore_label: int = 255,
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of a random subset of labeled pixels of every training image.

    The store is allocated once, ``(Σ kept pixels, D)`` in ``dtype``, after the first image has
    given ``D``; nothing of full resolution is kept beyond the current image's maps.

    Args:
        extractor: ``x (1, 3, S, S) -> list of maps``.
        images: ``(3, S, S)`` float images in [-1, 1].
        masks: ``(S, S)`` int64 labels (``ignore_label`` dropped).
        pixels_per_image: uniform sample of non-ignored pixels per image; ``0`` keeps all
            (the reference's behaviour, memory permitting).
        dtype: storage dtype (float16 halves the reference's float32).
        seed: sampling seed.

    Returns:
        ``features (N, D)`` in ``dtype`` and ``labels (N,)`` int64.
    """
    if len(images) != len(masks) or not images:
        raise ValueError(f"need as many images as masks (>0), got {len(images)} / {len(masks)}")
    generator = seeded_generator(seed)
    chosen = []
    for mask in masks:
        valid = (mask.reshape(-1) != ignore_label).nonzero().squeeze(1)
        if pixels_per_image and valid.numel() > pixels_per_image:
            valid = valid[torch.randperm(valid.numel(), generator=generator)[:pixels_per_image]]
        chosen.append(valid)
    total = sum(c.numel() for c in chosen)
    features = labels = None
    offset = 0
    for image, mask, flat in zip(images, masks, chosen):
        size = tuple(mask.shape)
        device = next(iter(extractor.buffers()), torch.empty(0)).device
        maps = extractor(image[None].to(device))
        coords = torch.stack([flat // size[1], flat % size[1]], dim=1)
        feats = gather_pixel_features(maps, coords, size=size)
        del maps
        if features is None:
            features = torch.empty((total, feats.shape[1]), dtype=dtype)
            labels = torch.empty(total, dtype=torch.long)
            logger.info(
                "Pixel store: %d pixels x %d features in %s = %.2f GiB",
                total,
                feats.shape[1],
                dtype,
                features.numel() * features.element_size() / 2**30,
            )
        features[offset : offset + len(flat)] = feats.to(dtype).cpu()
        labels[offset : offset + len(flat)] = mask.reshape(-1)[flat]
        offset += len(flat)
    return features, labels
