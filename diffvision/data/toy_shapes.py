"""A generated toy image set: one coloured shape (circle, square or triangle) per 32×32 image.

Small enough for a tiny DDPM to learn on a CPU in minutes, yet with samples that a person can
judge at a glance (round / square / pointed, one flat colour, dark background). Written once as
PNGs under ``datasets_root()/toy_shapes/<shape>/<index>.png`` (so it is an ordinary image folder
with one sub-folder per class) and re-created automatically when missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffvision.data.generated import generate_once
from diffvision.data.image_folder import ImageFolderDataset
from diffvision.data.paths import datasets_root

__all__ = ["TOY_SHAPES", "ToyShapesDataset", "draw_toy_shape", "ensure_toy_shapes"]


TOY_SHAPES = ("circle", "square", "triangle")
_PALETTE = (
    (230, 40, 40),  # red
    (40, 190, 60),  # green
    (40, 90, 230),  # blue
    (240, 200, 30),  # yellow
    (220, 60, 220),  # magenta
    (30, 210, 220),  # cyan
)
_BACKGROUND = (16, 16, 24)


def draw_toy_shape(rng: np.random.Generator, *, shape: str, image_size: int = 32) -> Image.Image:
    """Draw one shape of random colour, size and position on the dark background.

    Args:
        rng: random generator (all randomness comes from it).
        shape: one of :data:`TOY_SHAPES`.
        image_size: side of the square image in pixels.

    Returns:
        An RGB ``PIL.Image`` of size ``(image_size, image_size)``.
    """
    if shape not in TOY_SHAPES:
        raise ValueError(f"unknown toy shape {shape!r}; one of {TOY_SHAPES}")
    s = image_size
    img = Image.new("RGB", (s, s), _BACKGROUND)
    draw = ImageDraw.Draw(img)
    color = _PALETTE[int(rng.integers(len(_PALETTE)))]
    size = float(rng.uniform(0.4, 0.7)) * s  # bounding-box side
    cx, cy = (float(rng.uniform(size / 2 + 1, s - size / 2 - 1)) for _ in range(2))
    x0, y0, x1, y1 = cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    else:  # upward triangle
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=color)
    return img


def ensure_toy_shapes(
    root: str | Path | None = None,
    *,
    num_per_class: int = 1000,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Create the toy-shapes image folder if it is not complete yet; return its path.

    Generated once (:func:`~diffvision.data.generated.generate_once`: atomically, so
    concurrent callers and interrupted runs never see a half-written set); a complete folder is
    kept whatever arguments made it.

    Args:
        root: target folder (default ``datasets_root() / "toy_shapes"``).
        num_per_class: images per shape.
        image_size: image side in pixels.
        seed: seed of the generator; the set is a deterministic function of the arguments.

    Returns:
        The folder holding ``<shape>/<index>.png``.
    """
    root = Path(root) if root is not None else datasets_root() / "toy_shapes"

    def generate(out: Path) -> None:
        rng = np.random.default_rng(seed)
        for shape in TOY_SHAPES:
            (out / shape).mkdir(parents=True)
            for i in range(num_per_class):
                draw_toy_shape(rng, shape=shape, image_size=image_size).save(
                    out / shape / f"{i:05d}.png"
                )

    return generate_once(root, generate, what="toy shapes")


class ToyShapesDataset(ImageFolderDataset):
    """The toy shapes as ``(image (3, S, S) in [-1, 1], label)``; label = shape index.

    Args:
        root: folder of the set (default ``datasets_root() / "toy_shapes"``), created if missing.
        image_size: output side (the PNGs are 32×32; other sizes are resampled).
        random_flip: horizontal flip with probability 0.5.
    """

    def __init__(
        self, root: str | Path | None = None, *, image_size: int = 32, random_flip: bool = True
    ):
        super().__init__(
            ensure_toy_shapes(root),
            image_size=image_size,
            random_flip=random_flip,
            class_from_dir=True,
        )
