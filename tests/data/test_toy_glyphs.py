"""The generated glyph detection set: deterministic, tight boxes, long tail, shape-only classes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from diffvision.data.catalog import get_detection_dataset, load_detection_dataset
from diffvision.data.toy_glyphs import (
    GLYPH_CLASS_PROBS,
    GLYPH_CLASSES,
    ensure_toy_glyphs,
    render_glyph,
)


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory):
    root = ensure_toy_glyphs(
        tmp_path_factory.mktemp("g") / "toy_glyphs", seed=3, sizes={"train": 240, "val": 30}
    )
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    return root, coco


def test_deterministic_in_the_seed(tmp_path, glyphs):
    root, coco = glyphs
    again = ensure_toy_glyphs(tmp_path / "a", seed=3, sizes={"train": 240, "val": 30})
    assert json.loads((again / "annotations" / "instances_train.json").read_text()) == coco
    assert (again / "train" / "000005.png").read_bytes() == (
        root / "train" / "000005.png"
    ).read_bytes()
    other = ensure_toy_glyphs(tmp_path / "b", seed=4, sizes={"val": 30})
    assert (other / "val" / "000001.png").read_bytes() != (root / "val" / "000001.png").read_bytes()


@pytest.mark.parametrize("height,angle", [(14, 0.0), (40, 25.0), (56, -30.0)])
def test_render_glyph_is_tight_and_of_the_asked_height(height, angle):
    mask = render_glyph("7", height=height, angle=angle, font=cv2.FONT_HERSHEY_SIMPLEX, thickness=2)
    assert mask.shape[0] == height and mask.dtype == np.float32
    assert mask.max() > 0.9 and (mask < 0.1).mean() > 0.2  # solid strokes on a clear background
    # tight: ink on every border row / column
    for edge in (mask[0], mask[-1], mask[:, 0], mask[:, -1]):
        assert edge.max() > 0.05


def test_boxes_cover_the_ink_and_lie_inside_the_image(glyphs):
    root, coco = glyphs
    images = {im["id"]: im for im in coco["images"]}
    for ann in coco["annotations"][:200]:
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= im["width"] and y + h <= im["height"]
        assert ann["area"] == w * h and 1 <= ann["category_id"] <= len(GLYPH_CLASSES)


def test_class_counts_follow_the_long_tail(glyphs):
    _, coco = glyphs
    counts = np.bincount([a["category_id"] - 1 for a in coco["annotations"]], minlength=10)
    freq = counts / counts.sum()
    # multinomial: each share within 4 standard errors of its probability
    p = np.array(GLYPH_CLASS_PROBS)
    se = np.sqrt(p * (1 - p) / counts.sum())
    assert (np.abs(freq - p) < 4 * se + 1e-3).all(), (freq, p)
    assert counts[0] > 10 * max(counts[-1], 1)


def test_colour_carries_no_class_information(glyphs):
    """Per-class mean box colour is the same for every class (within sampling noise), unlike the
    toy set's hue families."""
    root, coco = glyphs
    by_class: dict[int, list[np.ndarray]] = {}
    cache = {}
    for ann in coco["annotations"]:
        if ann["image_id"] not in cache:
            cache[ann["image_id"]] = cv2.imread(str(root / "train" / f"{ann['image_id']:06d}.png"))
        x, y, w, h = ann["bbox"]
        pixels = cache[ann["image_id"]][y : y + h, x : x + w].reshape(-1, 3).astype(float)
        by_class.setdefault(ann["category_id"], []).append(pixels.mean(0))
    frequent = [c for c, v in by_class.items() if len(v) >= 40]
    assert len(frequent) >= 3
    means = np.stack([np.mean(by_class[c], 0) for c in frequent])
    assert np.abs(means - means.mean(0)).max() < 25  # 0-255 scale


def test_lvis_json_evaluates_perfect_boxes_to_100(glyphs, tmp_path):
    from diffvision.evaluation.lvis_evaluation import LVISEvaluator

    root, _ = glyphs
    path = root / "annotations" / "lvis_val.json"
    data = json.loads(path.read_text())
    assert {c["frequency"] for c in data["categories"]} <= {"r", "c", "f"}
    inputs, outputs = [], []
    for im in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        inputs.append({"image_id": im["id"]})
        outputs.append(
            {
                "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                "scores": torch.ones(len(anns)),
                "labels": torch.tensor([a["category_id"] - 1 for a in anns], dtype=torch.long),
            }
        )
    evaluator = LVISEvaluator(path, tmp_path)
    evaluator.process(inputs, outputs)
    assert evaluator.evaluate()["bbox/AP"] == pytest.approx(100.0)


def test_registered_names(tmp_path, monkeypatch):
    from diffvision.data import toy_glyphs

    monkeypatch.setattr(toy_glyphs, "GLYPH_SPLIT_SIZES", {"train": 5, "val": 3})  # fast
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path))
    info = get_detection_dataset("toy_glyphs_lvis_val")
    assert info.evaluator_type == "lvis" and info.json_file.name == "lvis_val.json"
    assert get_detection_dataset("toy_glyphs_val").evaluator_type == "coco"
    dicts, meta = load_detection_dataset("toy_glyphs_train")
    assert len(dicts) == 5 and meta.thing_classes == [f"digit_{c}" for c in GLYPH_CLASSES]
