"""Converting sampled images for saving: uint8 arrays, PNG grids and ``.npz`` files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["make_grid", "save_grid", "save_npz", "to_uint8"]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] → ``(N, H, W, C)`` uint8 (guided-diffusion's ``.npz`` layout)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, *, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile ``(N, H, W, C)`` uint8 images into one ``(rows·(H+pad)+pad, ..., C)`` image."""
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_grid(
    images: torch.Tensor, path: str | Path, *, nrow: int | None = None, upscale: int = 1
) -> Path:
    """Save ``(N, C, H, W)`` images in [-1, 1] as one PNG grid (nearest upscaling optional)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = Image.fromarray(make_grid(to_uint8(images), nrow=nrow))
    if upscale > 1:
        grid = grid.resize((grid.width * upscale, grid.height * upscale), Image.Resampling.NEAREST)
    grid.save(path)
    return path


def save_npz(images: torch.Tensor, path: str | Path, *, labels: torch.Tensor | None = None) -> Path:
    """Save samples as ``arr_0`` (N, H, W, C) uint8 (+ ``arr_1`` labels), like guided-diffusion."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = [to_uint8(images)]
    if labels is not None:
        arrays.append(labels.cpu().numpy())
    np.savez(path, *arrays)
    return path
