"""Diffusion over boxes: DiffusionDet's training corruption and DDIM sampling helpers.

Chen et al., DiffusionDet, arXiv:2211.09788, Algorithms 1-2; official code
github.com/ShoufaChen/DiffusionDet (v0.1) ``diffusiondet/detector.py``.

Boxes live in a "diffusion space": normalised (cx, cy, w, h) mapped from [0, 1] to [-scale, scale]
(``scale = SNR_SCALE = 2.0``). The schedule, the forward process, the timestep grid
(``make_timesteps(T, S, "diffusiondet")``) and the DDIM loop are the shared core's
(:mod:`diffvision.diffusion`): this module only converts boxes to and from that space.

Notation: N proposals per image, x0 clean boxes, x_t noisy boxes, ᾱ_t = ``alphas_cumprod[t]``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert

from diffvision.diffusion.forward import add_noise
from diffvision.diffusion.schedule import NoiseSchedule

__all__ = [
    "prepare_diffusion_concat",
    "boxes_to_diffusion",
    "diffusion_to_boxes",
]


def prepare_diffusion_concat(
    gt_boxes_cxcywh: Tensor,
    *,
    schedule: NoiseSchedule,
    num_proposals: int,
    scale: float = 2.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Corrupt one image's ground truth into N noisy boxes (paper Alg. 1, official
    ``prepare_diffusion_concat``).

    Steps: (1) one t ~ U{0..T-1}; (2) pad the n ground truths with Gaussian boxes
    N(0.5, 1/6) (w, h clipped at 1e-4) up to N, or keep a random subset of N, or use a whole-image
    box when n = 0; (3) x0 = (2·box - 1)·scale; (4) x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε with the core's
    ``add_noise``; (5) clamp to [-scale, scale] and map back to [0, 1] cxcywh; (6) convert to xyxy.

    Args:
        gt_boxes_cxcywh: (n, 4) ground truth, normalised cx, cy, w, h in [0, 1].
        schedule: the noise schedule (cosine, T = 1000 for DiffusionDet).
        num_proposals: N.
        scale: signal scale.
        generator: optional RNG (default: the global one, like the official code).

    Returns:
        boxes (N, 4) normalised xyxy (may extend outside [0, 1]) in ``gt_boxes_cxcywh``'s dtype,
        noise ε (N, 4) and t (1,) int64.
    """
    device = gt_boxes_cxcywh.device
    dtype = gt_boxes_cxcywh.dtype if gt_boxes_cxcywh.is_floating_point() else torch.float32
    gt = gt_boxes_cxcywh.to(dtype)
    t = torch.randint(0, schedule.num_timesteps, (1,), generator=generator).to(device)
    noise = torch.randn(num_proposals, 4, generator=generator).to(device=device, dtype=dtype)
    num_gt = gt.shape[0]
    if num_gt == 0:
        # a fake whole-image box: diffusion input only, the targets stay empty
        gt = torch.tensor([[0.5, 0.5, 1.0, 1.0]], dtype=dtype, device=device)
        num_gt = 1
    if num_gt < num_proposals:
        pad = torch.randn(num_proposals - num_gt, 4, generator=generator).to(device, dtype)
        pad = pad / 6.0 + 0.5  # 3-sigma within [0, 1]
        pad[:, 2:] = pad[:, 2:].clamp(min=1e-4)
        x0 = torch.cat((gt, pad), dim=0)
    elif num_gt > num_proposals:
        keep = torch.randperm(num_gt, generator=generator)[:num_proposals].sort().values
        x0 = gt[keep.to(device)]
    else:
        x0 = gt
    x0 = (x0 * 2.0 - 1.0) * scale
    # The official q_sample promotes to float64 (its float64 buffers); do the same.
    x_t = add_noise(schedule, x0.double(), noise.double(), t).to(dtype)
    x_t = x_t.clamp(-scale, scale)
    x_t = (x_t / scale + 1.0) / 2.0
    return box_convert(x_t, "cxcywh", "xyxy"), noise, t


def diffusion_to_boxes(x: Tensor, images_whwh: Tensor, *, scale: float = 2.0) -> Tensor:
    """Diffusion-space boxes -> absolute xyxy: clamp, to [0, 1] cxcywh, to xyxy, times (w,h,w,h).

    Args:
        x: (B, N, 4) diffusion-space cxcywh.
        images_whwh: (B, 4) unpadded (w, h, w, h) of each (resized) image.

    Returns:
        (B, N, 4) absolute xyxy in resized-image pixels (float32 unless ``x`` is float64).
    """
    x = x.clamp(-scale, scale)
    x = (x / scale + 1.0) / 2.0
    return box_convert(x, "cxcywh", "xyxy") * images_whwh[:, None, :].to(x.dtype)


def boxes_to_diffusion(boxes_xyxy: Tensor, images_whwh: Tensor, *, scale: float = 2.0) -> Tensor:
    """Absolute xyxy -> diffusion-space cxcywh in [-scale, scale] (the x̂_0 of the official
    ``model_predictions``).

    Args:
        boxes_xyxy: (B, N, 4) absolute boxes.
        images_whwh: (B, 4).

    Returns:
        (B, N, 4) clamped diffusion-space cxcywh.
    """
    x0 = box_convert(boxes_xyxy / images_whwh[:, None, :].to(boxes_xyxy.dtype), "xyxy", "cxcywh")
    return ((x0 * 2.0 - 1.0) * scale).clamp(-scale, scale)
