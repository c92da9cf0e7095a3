"""Semantic masks of the glyph scenes: a segmentation toy set unlike the toy scenes.

The toy scenes (:mod:`diffvision.data.toy_scenes`) hold a few large, textured blobs of four
classes. This set is the glyph detection set (:mod:`diffvision.data.toy_glyphs`) read as a
segmentation problem: the same images (``seed`` and sizes equal give the same pixels), with a
class per pixel instead of a box per object:

- 11 classes: ``background`` and the digits ``0``-``9``;
- thin strokes (1-3 px wide before anti-aliasing) on a cluttered background whose random
  strokes are *background*, so only the glyph's shape tells a digit from clutter;
- the detection set's long tail: digit ``k`` is drawn with probability ∝ 0.6**k, so digit ``9``
  covers about 1 % of the digit pixels and a 1/30 labeled subset often lacks the rarest digits.

A pixel is digit ``k`` (mask value ``k + 1``) where that glyph's anti-aliased coverage exceeds
0.25, the threshold its box uses. Layout (the folder format of :mod:`diffvision.data.seg_folder`)
under ``datasets_root()/toy_glyph_masks``::

    train/images/000001.png  train/masks/000001.png  train/classes.json   (800 images)
    val/images/...           val/masks/...           val/classes.json     (200 images)

Registered names: ``toy_glyph_masks_train`` / ``toy_glyph_masks_val``. Created on first use,
atomically, like every generated set.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from diffvision.data.generated import generate_once
from diffvision.data.paths import datasets_root
from diffvision.data.seg_folder import write_classes_json
from diffvision.data.toy_glyphs import GLYPH_CLASSES, GLYPH_SPLIT_SIZES, glyph_scenes

__all__ = [
    "GLYPH_MASK_CLASSES",
    "GLYPH_MASK_PALETTE",
    "ensure_toy_glyph_masks",
    "generate_toy_glyph_masks",
]

GLYPH_MASK_CLASSES = ("background", *(f"digit_{d}" for d in GLYPH_CLASSES))
# Background black, the digits on a qualitative palette (distinct hues for overlays).
GLYPH_MASK_PALETTE = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip


def generate_toy_glyph_masks(
    root: str | os.PathLike, *, seed: int = 0, sizes: dict[str, int] | None = None
) -> Path:
    """Write every split of the glyph mask set under ``root``; returns ``root``.

    Args:
        root: output folder; ``root/<split>`` must not exist yet.
        seed: the set is a pure function of it and of ``sizes`` (as the detection set).
        sizes: images per split, default :data:`GLYPH_SPLIT_SIZES` (800 train, 200 val).
    """
    root = Path(root)
    sizes = dict(GLYPH_SPLIT_SIZES if sizes is None else sizes)
    for split in sorted(sizes):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir()
        for image_id, (image, _, class_map) in enumerate(glyph_scenes(split, seed, sizes), 1):
            Image.fromarray(image).save(root / split / "images" / f"{image_id:06d}.png")
            Image.fromarray(class_map, mode="L").save(
                root / split / "masks" / f"{image_id:06d}.png"
            )
        write_classes_json(
            root / split / "classes.json", classes=GLYPH_MASK_CLASSES, palette=GLYPH_MASK_PALETTE
        )
    return root


def ensure_toy_glyph_masks(
    split: str,
    *,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
) -> Path:
    """The folder of one split (``"train"`` or ``"val"``), generating the set first when missing.

    Args:
        split: a key of ``sizes``.
        root: the set's folder; default ``datasets_root() / "toy_glyph_masks"``.
        seed: generation seed (0 = the images of the registered glyph detection set).
        sizes: images per split (default :data:`GLYPH_SPLIT_SIZES`).

    Raises:
        ValueError: a split not in ``sizes``.
    """
    sizes = dict(GLYPH_SPLIT_SIZES if sizes is None else sizes)
    if split not in sizes:
        raise ValueError(f"unknown glyph mask split {split!r}; known: {sorted(sizes)}")
    folder = Path(root) if root is not None else datasets_root() / "toy_glyph_masks"
    generate_once(
        folder,
        lambda out: generate_toy_glyph_masks(out, seed=seed, sizes=sizes),
        what="toy glyph masks",
        params={"seed": seed, "sizes": sizes},
    )
    return folder / split
