"""A generated toy image set: one coloured shape (circle, square or triangle) per 32×32 image.

Small enough for a tiny DDPM to learn on a CPU in minutes, yet with samples that a person can
judge at a glance (round / square / pointed, one flat colour, dark background). Written once as
PNGs under ``datasets_root()/toy_shapes/<shape>/<index>.png`` (so it is an ordinary image folder
with one sub-folder per class) and re-created automatically when missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffvision.data.image_folder import ImageFolderDataset
from diffvision.data.paths import datasets_root

__all__ = ["TOY_SHAPES", "ToyShapesDataset", "draw_toy_shape", "ensure_toy_shapes"]

logger = logging.getLogger(__name__)

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
_DONE_MARKER = ".complete"


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

    The folder is written to a temporary sibling and renamed into place, so concurrent callers
    (several ranks) and interrupted runs never see a half-written set.

    Args:
        root: target folder (default ``datasets_root() / "toy_shapes"``).
        num_per_class: images per shape.
        image_size: image side in pixels.
        seed: seed of the generator; the set is a deterministic function of the arguments.

    Returns:
        The folder holding ``<shape>/<index>.png``.
    """
    root = Path(root) if root is not None else datasets_root() / "toy_shapes"
    if (root / _DONE_MARKER).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        rng = np.random.default_rng(seed)
        for shape in TOY_SHAPES:
            (tmp / shape).mkdir()
            for i in range(num_per_class):
                draw_toy_shape(rng, shape=shape, image_size=image_size).save(
                    tmp / shape / f"{i:05d}.png"
                )
        (tmp / _DONE_MARKER).write_text(
            f"num_per_class={num_per_class} image_size={image_size} seed={seed}\n"
        )
        if root.exists() and not (root / _DONE_MARKER).is_file():
            shutil.rmtree(root)  # an incomplete folder from an older, interrupted writer
        try:
            os.replace(tmp, root)
            logger.info("wrote %d toy-shape images to %s", num_per_class * 3, root)
        except OSError:
            if not (root / _DONE_MARKER).is_file():  # lost a race only if the winner finished
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


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
