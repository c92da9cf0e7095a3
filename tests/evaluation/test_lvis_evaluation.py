"""LVISEvaluator (lvis package under NumPy 2) on an LVIS-format version of the toy set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffvision.data.toy_detection import ensure_toy_detection
from diffvision.evaluation.lvis_evaluation import LVISEvaluator, numpy_float_alias


@pytest.fixture(scope="module")
def lvis_json(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lvis")
    root = ensure_toy_detection(tmp / "toy_detection", sizes={"val": 20})
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    for c in data["categories"]:  # ids 1..4 -> rare, common, frequent, frequent
        c.update(frequency="rcff"[c["id"] - 1], image_count=5, synset=c["name"])
    for image in data["images"]:
        image.update(neg_category_ids=[], not_exhaustive_category_ids=[])
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x, y + h, x + w, y + h, x + w, y]]
    path = tmp / "lvis_toy_val.json"
    path.write_text(json.dumps(data))
    return path, data


def predictions(data, shift=0.0):
    per_image = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        per_image[ann["image_id"]].append(ann)
    inputs, outputs = [], []
    for image_id, anns in per_image.items():
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2] + shift, xywh[:, :2] + xywh[:, 2:] + shift], 1)
        inputs.append({"image_id": image_id})
        outputs.append(
            {
                "boxes": boxes,
                "scores": torch.ones(len(anns)),
                "labels": torch.tensor([a["category_id"] - 1 for a in anns]),
            }
        )
    return inputs, outputs


def test_perfect_predictions_give_100_with_frequency_groups(lvis_json, tmp_path):
    path, data = lvis_json
    evaluator = LVISEvaluator(path, tmp_path)
    evaluator.process(*predictions(data))
    metrics = evaluator.evaluate()
    for key in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
        assert metrics[f"bbox/{key}"] == pytest.approx(100.0)
    assert (tmp_path / "lvis_instances_results.json").is_file()
    assert not hasattr(np, "float") or "float" in np.__dict__  # alias removed again


def test_shifted_predictions_score_lower(lvis_json):
    path, data = lvis_json
    evaluator = LVISEvaluator(path)
    evaluator.process(*predictions(data, shift=5.0))
    assert 0 < evaluator.evaluate()["bbox/AP"] < 90


def test_max_dets_per_image_limits_recall(lvis_json):
    path, data = lvis_json
    inputs, outputs = predictions(data)
    assert any(len(out["scores"]) > 1 for out in outputs)
    for out in outputs:  # distinct scores so the kept detection is well defined
        out["scores"] = torch.linspace(1.0, 0.5, len(out["scores"]))
    for max_dets, perfect in ((300, True), (1, False)):
        evaluator = LVISEvaluator(path, max_dets_per_image=max_dets)
        evaluator.process(inputs, outputs)
        ap = evaluator.evaluate()["bbox/AP"]
        assert (ap == pytest.approx(100.0)) == perfect


def test_numpy_float_alias_is_temporary():
    had = "float" in np.__dict__
    with numpy_float_alias():
        assert np.float is float or had
    assert ("float" in np.__dict__) == had
