"""The glyph mask set: the glyph detection set's images, a class per pixel that agrees with its
boxes, the folder format, and generation on first use."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffvision.data.seg_folder import load_seg_folder, read_classes_json
from diffvision.data.toy_glyph_masks import GLYPH_MASK_CLASSES, ensure_toy_glyph_masks
from diffvision.data.toy_glyphs import ensure_toy_glyphs

SIZES = {"train": 24, "val": 6}


@pytest.fixture(scope="module")
def both_sets(tmp_path_factory):
    base = tmp_path_factory.mktemp("gm")
    masks = ensure_toy_glyph_masks("train", root=base / "masks", seed=5, sizes=SIZES).parent
    boxes = ensure_toy_glyphs(base / "boxes", seed=5, sizes=SIZES)
    return masks, boxes


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("split", sorted(SIZES))
def test_same_images_as_the_detection_set(both_sets, split):
    masks, boxes = both_sets
    records = load_seg_folder(masks / split)
    assert len(records) == SIZES[split]
    for record in records[:8]:
        stem = record["file_name"].rsplit("/", 1)[-1]
        assert np.array_equal(_rgb(record["file_name"]), _rgb(boxes / split / stem))


def test_class_map_agrees_with_the_boxes(both_sets):
    masks, boxes = both_sets
    coco = json.loads((boxes / "annotations" / "instances_train.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    digit_pixels, tight, annotations = 0, 0, 0
    for image in coco["images"]:
        class_map = np.asarray(Image.open(masks / "train" / "masks" / image["file_name"]))
        assert class_map.shape == (image["height"], image["width"])
        covered = np.zeros_like(class_map, dtype=bool)
        for ann in by_image.get(image["id"], []):
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(class_map[y : y + h, x : x + w] == ann["category_id"])
            assert len(ys) > 0  # the digit's pixels lie in its box
            # the box is the tight box of the digit's pixels (unless a later glyph covers an edge)
            tight += (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (0, 0, h, w)
            annotations += 1
            covered[y : y + h, x : x + w] = True
        # every digit pixel belongs to an annotated box of its class; the rest is background
        assert not (class_map[~covered] > 0).any()
        classes = {a["category_id"] for a in by_image.get(image["id"], [])}
        assert set(np.unique(class_map).tolist()) <= {0} | classes
        digit_pixels += int((class_map > 0).sum())
    assert digit_pixels > 0 and tight >= 0.9 * annotations


def test_folder_format_and_classes(both_sets):
    masks, _ = both_sets
    meta = read_classes_json(masks / "val" / "classes.json")
    assert meta["classes"] == list(GLYPH_MASK_CLASSES) and len(meta["classes"]) == 11
    assert len(meta["palette"]) == 11


def test_generated_once_and_unknown_split(tmp_path, both_sets):
    masks, _ = both_sets
    stamp = (masks / "val" / "masks" / "000001.png").stat().st_mtime_ns
    again = ensure_toy_glyph_masks("val", root=masks, seed=5, sizes=SIZES)
    assert (again / "masks" / "000001.png").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="unknown glyph mask split 'test'"):
        ensure_toy_glyph_masks("test", root=tmp_path / "x", sizes=SIZES)
