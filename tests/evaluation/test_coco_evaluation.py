"""COCOEvaluator on the generated toy set: perfect predictions score 100, shifted ones less."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffvision.data.toy_detection import ensure_toy_detection
from diffvision.evaluation.coco_evaluation import COCOEvaluator, instances_to_coco_results


@pytest.fixture(scope="module")
def toy_json(tmp_path_factory):
    root = ensure_toy_detection(
        tmp_path_factory.mktemp("eval") / "toy_detection", sizes={"val": 30}
    )
    return root / "annotations" / "instances_val.json"


def predictions_from_gt(json_file, *, shift=0.0, wrap=False):
    data = json.loads(json_file.read_text())
    per_image = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        per_image[ann["image_id"]].append(ann)
    inputs, outputs = [], []
    for image_id, anns in per_image.items():
        boxes = torch.tensor(
            [
                [
                    a["bbox"][0] + shift,
                    a["bbox"][1],
                    a["bbox"][0] + a["bbox"][2] + shift,
                    a["bbox"][1] + a["bbox"][3],
                ]
                for a in anns
            ]
        ).reshape(-1, 4)
        out = {
            "boxes": boxes,
            "scores": torch.full((len(anns),), 0.9),
            "labels": torch.tensor([a["category_id"] - 1 for a in anns], dtype=torch.int64),
        }
        inputs.append({"image_id": image_id})
        outputs.append({"instances": out} if wrap else out)
    return inputs, outputs


def test_perfect_predictions_score_100_and_write_results(toy_json, tmp_path):
    evaluator = COCOEvaluator(toy_json, tmp_path)
    evaluator.reset()
    inputs, outputs = predictions_from_gt(toy_json)
    for i in range(0, len(inputs), 4):  # batches of 4
        evaluator.process(inputs[i : i + 4], outputs[i : i + 4])
    metrics = evaluator.evaluate()
    for key in ("AP", "AP50", "AP75", "APs", "APm"):
        assert metrics[f"bbox/{key}"] == pytest.approx(100.0)
    assert math.isnan(metrics["bbox/APl"])  # toy objects are at most 64x64
    for name in ("rectangle", "ellipse", "triangle", "cross"):
        assert metrics[f"bbox/AP-{name}"] == pytest.approx(100.0)
    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    num_gt = len(json.loads(toy_json.read_text())["annotations"])
    assert len(results) == num_gt
    assert {r["category_id"] for r in results} <= {1, 2, 3, 4}  # json ids, not contiguous


def test_shifted_boxes_score_lower(toy_json):
    evaluator = COCOEvaluator(toy_json)
    evaluator.process(*predictions_from_gt(toy_json, shift=6.0, wrap=True))
    metrics = evaluator.evaluate()
    assert 0 < metrics["bbox/AP"] < 90
    assert metrics["bbox/AP50"] > metrics["bbox/AP75"]


def test_zero_predictions(toy_json):
    evaluator = COCOEvaluator(toy_json)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
    evaluator.process([{"image_id": 1}, {"image_id": 2}], [empty, empty])
    metrics = evaluator.evaluate()
    assert metrics["bbox/AP"] == 0.0 and metrics["bbox/AP-cross"] == 0.0
    assert COCOEvaluator(toy_json).evaluate() == {}  # nothing processed


def test_subset_of_images_is_scored_alone(toy_json):
    inputs, outputs = predictions_from_gt(toy_json)
    with_objects = [i for i, out in enumerate(outputs) if len(out["scores"])][:5]
    evaluator = COCOEvaluator(toy_json)  # e.g. one rank's shard, evaluated without gathering
    evaluator.process([inputs[i] for i in with_objects], [outputs[i] for i in with_objects])
    assert evaluator.evaluate()["bbox/AP"] == pytest.approx(100.0)


def test_instances_to_coco_results_xywh():
    out = {
        "boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0]]),
        "scores": torch.tensor([0.5]),
        "labels": torch.tensor([1]),
    }
    (r,) = instances_to_coco_results(out, image_id=9, contiguous_to_dataset_id={1: 17})
    assert r == {"image_id": 9, "category_id": 17, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.5}


def test_missing_json_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        COCOEvaluator(tmp_path / "nothere.json")


def test_distributed_evaluation_gathers_every_shard(toy_json, tmp_path, monkeypatch):
    # Two ranks simulated in one process: comm.all_gather hands rank 0 both shards. (The real
    # collective is diffvision.utils.comm's, tested with gloo processes in tests/engine.)
    from diffvision.data.samplers import InferenceSampler
    from diffvision.utils import comm

    inputs, outputs = predictions_from_gt(toy_json)
    evaluators = []
    for rank in range(2):
        evaluator = COCOEvaluator(toy_json, tmp_path)
        for i in InferenceSampler(len(inputs), rank=rank, world_size=2):
            evaluator.process([inputs[i]], [outputs[i]])
        evaluators.append(evaluator)
    shards = [e._predictions for e in evaluators]
    assert 0 < len(shards[0]) < len(inputs)
    monkeypatch.setattr(comm, "all_gather", lambda obj: shards)
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert evaluators[1].evaluate() == {}
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    assert evaluators[0].evaluate()["bbox/AP"] == pytest.approx(100.0)
    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(results) == len(json.loads(toy_json.read_text())["annotations"])
