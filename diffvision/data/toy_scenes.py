"""A generated toy scene dataset for CPU-sized segmentation experiments.

Each image shows a few textured shapes on a textured background. The class of a pixel is fixed
by the *shape and texture* of the object it belongs to, never by its colour: every object and
the background draw their colours from the same distribution. A per-pixel colour classifier
therefore has little to go on, while features with spatial context (a CNN, a DDPM UNet) do —
the setting in which label-efficient methods are meant to shine.

Classes (indices in the masks)::

    0 background  smooth two-colour gradient plus fine noise
    1 disk        flat colour with radial shading
    2 box         rotated rectangle with parallel stripes
    3 triangle    checkerboard texture
    4 ring        annulus with a dotted texture

Written in the folder format of :mod:`diffvision.data.seg_folder` (``images/``, ``masks/``,
``classes.json``). :func:`ensure_toy_scenes` creates a split under
``$DIFFVISION_DATASETS/toy_scenes/<split>`` when it is missing; the same arguments always give
byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from diffvision.data.generated import generate_once
from diffvision.data.seg_folder import write_classes_json

__all__ = [
    "TOY_SCENE_CLASSES",
    "TOY_SCENE_PALETTE",
    "TOY_SCENE_SPLITS",
    "ensure_toy_scenes",
    "generate_toy_scenes",
    "render_toy_scene",
]


TOY_SCENE_CLASSES = ("background", "disk", "box", "triangle", "ring")
TOY_SCENE_PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200))
#: split name -> (number of images, seed); dataset names are ``toy_scenes_<split>``.
TOY_SCENE_SPLITS = {"train": (200, 0), "val": (50, 1)}


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.1, 0.9, size=3)


def render_toy_scene(
    rng: np.random.Generator, *, image_size: int = 64, max_objects: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene.

    Args:
        rng: NumPy generator; consumed deterministically.
        image_size: side of the square image in pixels.
        max_objects: objects per image are drawn uniformly from ``[1, max_objects]``.

    Returns:
        ``image`` uint8 ``(H, W, 3)`` and ``mask`` uint8 ``(H, W)`` of class indices.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    size = image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size  # (H, W) in [0, 1)

    # Background: gradient between two random colours along a random direction, plus noise.
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5
    c0, c1 = _random_colour(rng), _random_colour(rng)
    image = c0 + (c1 - c0) * np.clip(ramp, 0, 1)[..., None]
    image = image + rng.normal(0, 0.03, size=image.shape)
    mask = np.zeros((size, size), dtype=np.uint8)

    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(1, len(TOY_SCENE_CLASSES)))
        cx, cy = rng.uniform(0.15, 0.85, size=2)
        radius = rng.uniform(0.1, 0.22)
        colour, colour2 = _random_colour(rng), _random_colour(rng)
        dx, dy = xx - cx, yy - cy
        dist = np.sqrt(dx**2 + dy**2)
        if cls == 1:  # disk, radial shading
            region = dist < radius
            shade = 1.0 - 0.5 * (dist / radius) ** 2
            texture = colour * shade[..., None]
        elif cls == 2:  # rotated box, stripes across its long axis
            theta = rng.uniform(0, np.pi)
            u = np.cos(theta) * dx + np.sin(theta) * dy
            v = -np.sin(theta) * dx + np.cos(theta) * dy
            region = (np.abs(u) < radius) & (np.abs(v) < radius * rng.uniform(0.45, 0.8))
            period = rng.uniform(0.04, 0.07)
            stripes = (np.floor(u / period) % 2 == 0)[..., None]
            texture = np.where(stripes, colour, colour2)
        elif cls == 3:  # triangle, checkerboard
            theta = rng.uniform(0, 2 * np.pi)
            corners = np.array(
                [
                    (
                        cx + radius * np.cos(theta + k * 2 * np.pi / 3),
                        cy + radius * np.sin(theta + k * 2 * np.pi / 3),
                    )
                    for k in range(3)
                ]
            )
            region = np.ones_like(mask, dtype=bool)
            for k in range(3):
                (x0, y0), (x1, y1) = corners[k], corners[(k + 1) % 3]
                region &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) > 0
            cell = rng.uniform(0.03, 0.05)
            checker = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2 == 0)[..., None]
            texture = np.where(checker, colour, colour2)
        else:  # ring with dots
            region = (dist < radius) & (dist > radius * 0.55)
            cell = 0.05
            fx, fy = (xx / cell) % 1 - 0.5, (yy / cell) % 1 - 0.5
            dots = ((fx**2 + fy**2) < 0.08)[..., None]
            texture = np.where(dots, colour2, colour)
        image = np.where(region[..., None], texture, image)
        mask[region] = cls

    image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, mask


def generate_toy_scenes(
    root: str | Path,
    *,
    num_images: int,
    image_size: int = 64,
    seed: int = 0,
    max_objects: int = 4,
) -> Path:
    """Write ``num_images`` scenes to ``root`` in the folder format.

    Args:
        root: split folder to create (``images/``, ``masks/``, ``classes.json`` inside).
        num_images: number of scenes.
        image_size: square side in pixels.
        seed: base seed; image ``i`` uses ``numpy.random.default_rng([seed, i])``.
        max_objects: upper bound on objects per scene.

    Returns:
        ``root`` as a ``Path``.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        image, mask = render_toy_scene(rng, image_size=image_size, max_objects=max_objects)
        Image.fromarray(image).save(root / "images" / f"{i:05d}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{i:05d}.png")
    write_classes_json(root / "classes.json", classes=TOY_SCENE_CLASSES, palette=TOY_SCENE_PALETTE)
    return root


def ensure_toy_scenes(
    split: str = "train",
    *,
    root: str | Path | None = None,
    image_size: int = 64,
    num_images: int | None = None,
) -> Path:
    """Return the folder of a toy-scene split, generating it when missing or different.

    Args:
        split: one of :data:`TOY_SCENE_SPLITS` (``"train"``: 200 images, seed 0; ``"val"``: 50
            images, seed 1).
        root: datasets root; default :func:`diffvision.data.paths.datasets_root`.
        image_size: square side in pixels.
        num_images: override the split's default image count.

    Returns:
        ``<root>/toy_scenes/<split>`` (``_<image_size>px`` appended when not 64).
    """
    if split not in TOY_SCENE_SPLITS:
        raise ValueError(f"unknown toy scene split {split!r}; known: {sorted(TOY_SCENE_SPLITS)}")
    if root is None:
        from diffvision.data.paths import datasets_root

        root = datasets_root()
    default_count, seed = TOY_SCENE_SPLITS[split]
    count = num_images if num_images is not None else default_count
    name = split if image_size == 64 else f"{split}_{image_size}px"
    folder = Path(root) / "toy_scenes" / name
    params = {"num_images": count, "image_size": image_size, "seed": seed, "max_objects": 4}
    return generate_once(
        folder,
        lambda out: generate_toy_scenes(out, num_images=count, image_size=image_size, seed=seed),
        what=f"toy scenes ({split})",
        params=params,
    )
