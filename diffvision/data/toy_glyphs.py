"""A generated detection set whose classes differ only by shape: Hershey digits on clutter.

The toy set (:mod:`diffvision.data.toy_detection`) gives each class its own hue family, so a
detector can classify by colour alone. Here the ten classes are the digits ``0``-``9`` drawn with
OpenCV's Hershey vector fonts, and nothing but the glyph's shape tells them apart:

- every object gets a random colour (only kept far enough from the local background to be
  visible), a random Hershey font (simplex / duplex / complex / triplex / plain / italic
  variants), stroke thickness, height (14-56 px) and rotation (±30°);
- the background is a random colour with noise and a gradient, cluttered with random strokes
  (lines, arcs, circles) of random colours and widths, i.e. glyph-like edges that are not objects;
- class frequencies are long-tailed: class ``k`` is drawn with probability ∝ 0.6**k (digit
  ``0`` about 100x as often as ``9``), so LVIS-style rare / common / frequent groups exist.

Images are 128-192 px a side with 0-6 objects (IoU between objects < 0.2); a box is the tight
box of the glyph's drawn pixels. Layout under ``datasets_root()/toy_glyphs``::

    train/000001.png ...   val/000001.png ...
    annotations/instances_{train,val}.json   (COCO)
    annotations/lvis_{train,val}.json        (LVIS v1 fields: frequency from the train counts,
                                              image_count, neg/not-exhaustive ids, polygons)

Registered names: ``toy_glyphs_train`` / ``toy_glyphs_val`` (COCO evaluation) and
``toy_glyphs_lvis_train`` / ``toy_glyphs_lvis_val`` (LVIS evaluation, APr/APc/APf). The set is a
pure function of ``seed`` and the sizes and is created on first use, atomically (written next to
the target, then renamed), like the toy set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from diffvision.data.generated import generate_once
from diffvision.data.paths import datasets_root
from diffvision.data.toy_detection import _iou

__all__ = [
    "GLYPH_CLASSES",
    "GLYPH_CLASS_PROBS",
    "GLYPH_SPLIT_SIZES",
    "ensure_toy_glyphs",
    "generate_toy_glyphs",
    "glyph_scenes",
    "make_glyph_image",
    "render_glyph",
]


GLYPH_CLASSES = tuple(str(d) for d in range(10))
_WEIGHTS = 0.6 ** np.arange(len(GLYPH_CLASSES))
GLYPH_CLASS_PROBS = tuple(float(w) for w in _WEIGHTS / _WEIGHTS.sum())
_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_PLAIN,
    cv2.FONT_HERSHEY_SIMPLEX | cv2.FONT_ITALIC,
    cv2.FONT_HERSHEY_COMPLEX | cv2.FONT_ITALIC,
)
GLYPH_SPLIT_SIZES = {"train": 800, "val": 200}


def render_glyph(text: str, *, height: int, angle: float, font: int, thickness: int) -> np.ndarray:
    """An anti-aliased coverage mask ``(h, w)`` float32 in [0, 1] of ``text``, rotated by
    ``angle`` degrees and scaled so its drawn pixels are ``height`` rows tall, cropped tight."""
    scale = 4.0
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness * 4)
    side = int(2 * max(tw, th + base)) + 16
    canvas = np.zeros((side, side), np.uint8)
    org = ((side - tw) // 2, (side + th) // 2)
    cv2.putText(canvas, text, org, font, scale, 255, thickness * 4, cv2.LINE_AA)
    rot = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
    canvas = cv2.warpAffine(canvas, rot, (side, side), flags=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(canvas > 32)
    crop = canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    width = max(2, int(round(crop.shape[1] * height / crop.shape[0])))
    mask = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)
    return mask.astype(np.float32) / 255.0


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.integers(40, 216, size=3)
    noise = rng.normal(0, 10, size=(height, width, 3))
    gradient = np.linspace(-25, 25, width)[None, :, None] * rng.choice([-1, 1])
    image = np.clip(base + noise + gradient, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 10))):  # clutter strokes
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        thick = int(rng.integers(1, 4))
        kind = rng.integers(3)
        p = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if kind == 0:
            q = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(image, p, q, color, thick, cv2.LINE_AA)
        elif kind == 1:
            axes = (int(rng.integers(4, 30)), int(rng.integers(4, 30)))
            start = int(rng.integers(0, 360))
            angle = int(rng.integers(0, 180))
            cv2.ellipse(image, p, axes, angle, start, start + int(rng.integers(60, 200)),
                        color, thick, cv2.LINE_AA)  # fmt: skip
        else:
            cv2.circle(image, p, int(rng.integers(3, 20)), color, thick, cv2.LINE_AA)
    return image


def make_glyph_image(
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[tuple[int, list[int]]], np.ndarray]:
    """One scene drawn from ``rng``: the image, its objects and its class map.

    Returns:
        ``image`` ``(H, W, 3)`` uint8 RGB; ``objects`` ``[(class, [x, y, w, h])]`` with the
        class index into :data:`GLYPH_CLASSES`; ``class_map`` ``(H, W)`` uint8, ``0`` for
        background and ``k + 1`` where digit ``k`` covers the pixel (coverage > 0.25, the same
        threshold as the box; a later glyph is drawn over an earlier one).
    """
    width, height = (int(v) for v in rng.integers(128, 193, size=2))
    image = _background(rng, height, width)
    class_map = np.zeros((height, width), np.uint8)
    objects: list[tuple[int, list[int]]] = []
    boxes = np.zeros((0, 4))
    num_objects = 0 if rng.random() < 0.08 else int(rng.integers(1, 7))
    for _ in range(num_objects):
        cls = int(rng.choice(len(GLYPH_CLASSES), p=GLYPH_CLASS_PROBS))
        mask = render_glyph(
            GLYPH_CLASSES[cls],
            height=int(rng.integers(14, 57)),
            angle=float(rng.uniform(-30, 30)),
            font=int(_FONTS[int(rng.integers(len(_FONTS)))]),
            thickness=int(rng.integers(1, 4)),
        )
        h, w = mask.shape
        if h >= height or w >= width:
            continue
        for _attempt in range(20):
            x1, y1 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = np.array([x1, y1, x1 + w, y1 + h], dtype=float)
            if (_iou(box, boxes) < 0.2).all():
                break
        else:
            continue
        region = image[y1 : y1 + h, x1 : x1 + w].astype(np.float32)
        local = region.reshape(-1, 3).mean(0)
        for _attempt in range(20):  # a random colour that stands out from the local background
            color = rng.integers(0, 256, 3).astype(np.float32)
            if np.abs(color - local).sum() > 180:
                break
        alpha = mask[..., None]
        image[y1 : y1 + h, x1 : x1 + w] = np.clip(
            region * (1 - alpha) + color * alpha, 0, 255
        ).astype(np.uint8)
        covered = mask > 0.25
        class_map[y1 : y1 + h, x1 : x1 + w][covered] = cls + 1
        ys, xs = np.nonzero(covered)
        bx1, by1, bx2, by2 = x1 + xs.min(), y1 + ys.min(), x1 + xs.max() + 1, y1 + ys.max() + 1
        boxes = np.vstack([boxes, box])
        objects.append((cls, [int(bx1), int(by1), int(bx2 - bx1), int(by2 - by1)]))
    return image, objects, class_map


def glyph_scenes(
    split: str, seed: int, sizes: dict[str, int]
) -> Iterator[tuple[np.ndarray, list[tuple[int, list[int]]], np.ndarray]]:
    """The ``sizes[split]`` scenes of one split, in order, as :func:`make_glyph_image` returns
    them. A split's stream depends only on ``seed`` and the split's rank among ``sizes``' names,
    so the detection set and the mask set built from the same arguments hold the same images."""
    rng = np.random.default_rng([seed, sorted(sizes).index(split), 7])
    for _ in range(sizes[split]):
        yield make_glyph_image(rng)


def _lvis_frequency(image_count: int) -> str:
    # LVIS v1's rule on training-image counts: rare 1-10, common 11-100, frequent > 100.
    return "r" if image_count <= 10 else ("c" if image_count <= 100 else "f")


def generate_toy_glyphs(
    root: str | os.PathLike, *, seed: int = 0, sizes: dict[str, int] | None = None
) -> Path:
    """Write the glyph set to ``root`` (which must not exist yet); returns ``root``.

    Args:
        root: output folder.
        seed: the set is a pure function of it (and of ``sizes``).
        sizes: images per split, default ``{"train": 800, "val": 200}``; the LVIS frequency
            groups use the ``"train"`` split's image counts when it exists.
    """
    root = Path(root)
    sizes = dict(GLYPH_SPLIT_SIZES if sizes is None else sizes)
    (root / "annotations").mkdir(parents=True)
    splits = {}
    for split in sorted(sizes):
        (root / split).mkdir()
        images, annotations = [], []
        for image_id, (image, objects, _) in enumerate(glyph_scenes(split, seed, sizes), 1):
            file_name = f"{image_id:06d}.png"
            cv2.imwrite(str(root / split / file_name), image[..., ::-1])
            images.append(
                {"id": image_id, "file_name": file_name, "width": image.shape[1],
                 "height": image.shape[0]}
            )  # fmt: skip
            for cls, (x, y, w, h) in objects:
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                     "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
                )  # fmt: skip
        splits[split] = (images, annotations)
    reference = splits.get("train", next(iter(splits.values())))
    train_image_count = [
        len({a["image_id"] for a in reference[1] if a["category_id"] == c + 1})
        for c in range(len(GLYPH_CLASSES))
    ]
    for split, (images, annotations) in splits.items():
        categories = [
            {"id": i + 1, "name": f"digit_{name}", "supercategory": "glyph"}
            for i, name in enumerate(GLYPH_CLASSES)
        ]
        coco = {
            "info": {"description": "diffvision toy glyphs (Hershey digits)", "seed": seed},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        present = {}
        for a in annotations:
            present.setdefault(a["image_id"], set()).add(a["category_id"])
        lvis_images = [
            dict(im, neg_category_ids=[], not_exhaustive_category_ids=[]) for im in images
        ]
        lvis_annotations = []
        for a in annotations:
            x, y, w, h = a["bbox"]
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            lvis_annotations.append({k: v for k, v in a.items() if k != "iscrowd"})
            lvis_annotations[-1]["segmentation"] = [poly]
        lvis_categories = []
        for c, cat in enumerate(categories):
            count = len({a["image_id"] for a in annotations if a["category_id"] == c + 1})
            lvis_categories.append(
                {**cat, "synset": cat["name"], "def": f"the digit {GLYPH_CLASSES[c]}",
                 "image_count": count,
                 "instance_count": sum(a["category_id"] == c + 1 for a in annotations),
                 "frequency": _lvis_frequency(train_image_count[c])}
            )  # fmt: skip
        lvis = dict(coco, images=lvis_images, annotations=lvis_annotations)
        lvis["categories"] = lvis_categories
        (root / "annotations" / f"lvis_{split}.json").write_text(json.dumps(lvis))
    return root


def ensure_toy_glyphs(
    root: str | os.PathLike | None = None, *, seed: int = 0, sizes: dict[str, int] | None = None
) -> Path:
    """Return the glyph set folder (default ``datasets_root() / "toy_glyphs"``), generating it
    first when missing (atomically: a temporary sibling folder renamed into place)."""
    root = Path(root) if root is not None else datasets_root() / "toy_glyphs"
    return generate_once(
        root,
        lambda out: generate_toy_glyphs(out, seed=seed, sizes=sizes),
        what="toy glyph detection",
    )
