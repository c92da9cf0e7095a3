"""A generated detection dataset in COCO format: coloured shapes on a textured background.

Small enough to train and evaluate DiffusionDet on a CPU in minutes, and easy enough that a
working detector scores far above chance. Layout under ``datasets_root()/toy_detection``::

    train/000000.png ...           val/000000.png ...
    annotations/instances_train.json   annotations/instances_val.json

Classes (category ids 1..4): ``rectangle``, ``ellipse``, ``triangle``, ``cross``. Each class has
its shape and a loose hue family (red / green / blue / yellow, with jitter), so both shape and
colour carry signal. Images are 128-192 px on each side (mixed aspect ratios), hold 0-4 objects
of 16-64 px that overlap at most moderately; about 10% of the images are empty (the
matcher and the data pipeline must handle images without boxes).

The set is a pure function of ``seed`` and the sizes. It is created on first use: written to a
temporary folder next to the target and renamed into place, so concurrent processes (several
ranks, pytest workers) never see a half-written dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from diffvision.data.generated import generate_once
from diffvision.data.paths import datasets_root

__all__ = ["TOY_CLASSES", "ensure_toy_detection", "generate_toy_detection"]


TOY_CLASSES = ("rectangle", "ellipse", "triangle", "cross")
# Base RGB colour per class; each object jitters it.
_CLASS_COLORS = np.array([[220, 50, 50], [50, 200, 60], [50, 80, 230], [230, 210, 40]])
_DEFAULT_SIZES = {"train": 400, "val": 100}


def _draw_shape(draw: ImageDraw.ImageDraw, cls: int, box: tuple, color: tuple) -> None:
    x1, y1, x2, y2 = box
    if cls == 0:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=color)
    elif cls == 1:
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=color)
    elif cls == 2:
        draw.polygon([((x1 + x2) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=color)
    else:
        tx, ty = (x2 - x1) / 3, (y2 - y1) / 3
        draw.rectangle([x1 + tx, y1, x2 - tx - 1, y2 - 1], fill=color)
        draw.rectangle([x1, y1 + ty, x2 - 1, y2 - ty - 1], fill=color)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0)
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + areas - inter)


def _visible_masks(
    objects: list[tuple[int, list[int]]], width: int, height: int
) -> list[np.ndarray]:
    """Each object's exact visible pixels: its shape drawn with the same PIL calls as the image,
    minus the shapes drawn after it (which paint over it). (height, width) uint8 {0, 1} each."""
    masks = []
    covered = np.zeros((height, width), dtype=np.uint8)  # union of the shapes drawn later
    for cls, (x, y, w, h) in reversed(objects):
        canvas = Image.new("L", (width, height), 0)
        _draw_shape(ImageDraw.Draw(canvas), cls, (x, y, x + w, y + h), 1)
        shape = np.asarray(canvas, dtype=np.uint8)
        masks.append(shape & (1 - covered))
        covered |= shape
    return masks[::-1]


def _make_image(rng: np.random.Generator) -> tuple[Image.Image, list[tuple[int, list[int]]]]:
    width, height = (int(v) for v in rng.integers(128, 193, size=2))
    base = rng.integers(70, 170, size=3)
    noise = rng.normal(0, 12, size=(height, width, 3))
    gradient = np.linspace(-20, 20, width)[None, :, None]
    pixels = np.clip(base + noise + gradient, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    objects: list[tuple[int, list[int]]] = []
    num_objects = 0 if rng.random() < 0.1 else int(rng.integers(1, 5))
    boxes = np.zeros((0, 4))
    for _ in range(num_objects):
        for _attempt in range(20):
            w, h = (int(v) for v in rng.integers(16, 65, size=2))
            x1 = int(rng.integers(0, width - w + 1))
            y1 = int(rng.integers(0, height - h + 1))
            box = np.array([x1, y1, x1 + w, y1 + h], dtype=float)
            if (_iou(box, boxes) < 0.3).all():
                break
        else:
            continue
        cls = int(rng.integers(len(TOY_CLASSES)))
        color = tuple(
            int(c) for c in np.clip(_CLASS_COLORS[cls] + rng.integers(-30, 31, 3), 0, 255)
        )
        _draw_shape(draw, cls, (x1, y1, x1 + w, y1 + h), color)
        boxes = np.vstack([boxes, box])
        objects.append((cls, [x1, y1, w, h]))
    return image, objects


def generate_toy_detection(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    masks: bool = False,
) -> Path:
    """Write the toy dataset to ``root`` (which must not exist yet).

    Args:
        root: output folder.
        seed: the dataset is a pure function of it (and of ``sizes``).
        sizes: images per split, default ``{"train": 400, "val": 100}``.
        masks: give each annotation its exact visible mask as a compressed COCO RLE
            ``segmentation`` (and that mask's pixel count as ``area``); the images and boxes are
            the same either way.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    sizes = dict(_DEFAULT_SIZES if sizes is None else sizes)
    (root / "annotations").mkdir(parents=True)
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(TOY_CLASSES)
    ]
    for split_index, (split, num_images) in enumerate(sorted(sizes.items())):
        rng = np.random.default_rng([seed, split_index])
        (root / split).mkdir()
        images, annotations = [], []
        for image_id in range(1, num_images + 1):
            image, objects = _make_image(rng)
            file_name = f"{image_id:06d}.png"
            image.save(root / split / file_name)
            images.append(
                {
                    "id": image_id,
                    "file_name": file_name,
                    "width": image.width,
                    "height": image.height,
                }
            )
            visible = _visible_masks(objects, image.width, image.height) if masks else None
            for k, (cls, (x, y, w, h)) in enumerate(objects):
                ann = {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
                if visible is not None:
                    rle = mask_utils.encode(np.asfortranarray(visible[k]))
                    ann["segmentation"] = {
                        "size": [int(v) for v in rle["size"]],
                        "counts": rle["counts"].decode("ascii"),
                    }
                    ann["area"] = int(visible[k].sum())
                annotations.append(ann)
        data = {
            "info": {"description": "diffvision toy detection", "seed": seed},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        with open(root / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump(data, f)
    return root


def ensure_toy_detection(
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    masks: bool = False,
) -> Path:
    """Return the toy dataset folder, generating it first when missing.

    Safe under concurrency: the set is written to a temporary sibling folder and renamed into
    place; a process that loses the race discards its copy.

    Args:
        root: default ``datasets_root() / "toy_detection"``.
        seed, sizes, masks: see :func:`generate_toy_detection`.
    """
    root = Path(root) if root is not None else datasets_root() / "toy_detection"
    return generate_once(
        root,
        lambda out: generate_toy_detection(out, seed=seed, sizes=sizes, masks=masks),
        what="toy instances" if masks else "toy detection",
    )
