"""Per-class tables (log, CSV) and precision-recall curves after COCO and sem-seg evaluation.

The closed-form case: one image, one box per class. Class ``exact`` is found exactly (AP = AP50 =
100); class ``shifted`` by a box of IoU 20.5/39.5 ≈ 0.52 with its ground truth, a true positive at
the IoU threshold 0.50 only (AP = 1/10 of 100 = 10, AP50 = 100); class ``missed`` has no
detection (0, 0); class ``absent`` has neither ground truth nor detection (NaN).
"""

from __future__ import annotations

import csv
import json
import logging
import math

import cv2
import numpy as np
import pytest
import torch

from diffvision.data.toy_detection import ensure_toy_detection
from diffvision.evaluation.coco_evaluation import COCOEvaluator
from diffvision.evaluation.reports import markdown_table, mean_std
from diffvision.evaluation.sem_seg import SemSegEvaluator, iou_from_confusion
from tests.tool_helpers import REPO, drop_tool_log_handlers, load_tool

NAMES = ["exact", "shifted", "missed", "absent"]
EXPECTED = {"exact": (100.0, 100.0), "shifted": (10.0, 100.0), "missed": (0.0, 0.0)}


def _closed_form_json(path):
    gt = [[10, 10, 40, 40], [60, 10, 30, 30], [10, 60, 30, 30]]  # xywh, classes 1..3
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": i + 1, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0} for i, b in enumerate(gt)],
    }))  # fmt: skip
    return path


def _read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_per_class_ap_table_csv_and_curves_match_the_closed_form(tmp_path, caplog):
    evaluator = COCOEvaluator(_closed_form_json(tmp_path / "gt.json"), tmp_path / "out")
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0], [69.5, 10.0, 99.5, 40.0]])  # xyxy
    with caplog.at_level(logging.INFO, logger="diffvision.evaluation.coco_evaluation"):
        evaluator.process(
            [{"image_id": 1}],
            [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])}],
        )
        metrics = evaluator.evaluate()
    rows = _read_csv(tmp_path / "out" / "gt_per_class.csv")
    assert rows[0] == ["class", "AP", "AP50"] and [r[0] for r in rows[1:]] == NAMES
    for name, ap, ap50 in rows[1:]:
        if name == "absent":
            assert ap == ap50 == "nan"
            continue
        assert (float(ap), float(ap50)) == pytest.approx(EXPECTED[name])
        assert float(ap) == pytest.approx(metrics[f"bbox/AP-{name}"])
    (table,) = [r.getMessage() for r in caplog.records if "per-class box AP" in r.getMessage()]
    assert "shifted" in table and "10.00" in table and "100.00" in table
    image = cv2.imread(str(tmp_path / "out" / "gt_pr_curves.png"))
    assert image is not None and image.shape[0] > 100 and image.std() > 0


def test_sem_seg_per_class_iou_table_and_csv(tmp_path, caplog):
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 3, (20, 30))
    pred = np.where(rng.random((20, 30)) < 0.7, gt, rng.integers(0, 3, (20, 30)))
    evaluator = SemSegEvaluator(num_classes=3, class_names=["a", "b", "c"], report_dir=tmp_path,
                                dataset_name="toy_val")  # fmt: skip
    evaluator.process_image(pred, gt)
    with caplog.at_level(logging.INFO, logger="diffvision.evaluation.sem_seg"):
        evaluator.evaluate()
    confusion = np.zeros((3, 3))
    np.add.at(confusion, (gt.ravel(), pred.ravel()), 1)
    iou = iou_from_confusion(confusion)["iou"]
    rows = _read_csv(tmp_path / "toy_val_per_class.csv")
    assert rows[0] == ["class", "IoU", "Acc"]
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(100 * iou)
    assert any("per-class IoU" in r.getMessage() for r in caplog.records)


def test_train_net_on_the_toy_set_writes_the_table_csv_and_curves(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    ensure_toy_detection(tmp_path / "datasets" / "toy_detection", sizes={"train": 4, "val": 3})
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        try:
            status = load_tool("train_net").cli(
                ["--config", str(REPO / "tests/configs/diffdet_tiny.yaml"),
                 "DATASETS.CUSTOM", "[]", "DATASETS.TRAIN", "('toy_detection_train',)",
                 "DATASETS.TEST", "('toy_detection_val',)", "MODEL.DiffusionDet.NUM_CLASSES", "4",
                 "MODEL.RESNETS.NORM", "BN", "SOLVER.MAX_ITER", "1", "MODEL.DEVICE", "cpu",
                 "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
                 "OUTPUT_DIR", str(out)]
            )  # fmt: skip
        finally:
            drop_tool_log_handlers()
    assert status == 0
    (table,) = [r.getMessage() for r in caplog.records if "per-class box AP" in r.getMessage()]
    names = ["rectangle", "ellipse", "triangle", "cross"]
    assert all(n in table for n in names)
    rows = _read_csv(out / "toy_detection_val_per_class.csv")
    assert [r[0] for r in rows[1:]] == names
    final = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for name, ap, _ in rows[1:]:
        expected = final[f"eval/bbox/AP-{name}"]
        assert float(ap) == pytest.approx(expected) or (math.isnan(float(ap)) and expected == "nan")
    assert cv2.imread(str(out / "toy_detection_val_pr_curves.png")) is not None


def test_mean_std_is_the_sample_statistic_over_the_seeds_it_has():
    # 1, 2, 6: mean 3, sample variance ((-2)² + (-1)² + 3²) / 2 = 7.
    assert mean_std([1.0, 2.0, 6.0]) == f"3.00 ± {math.sqrt(7):.2f}"
    assert mean_std([1.0, 2.0, 6.0], digits=1) == "3.0 ± 2.6"
    # A run without a value (None, NaN) is left out, not counted as zero.
    assert mean_std([1.0, None, 6.0, float("nan")]) == f"3.50 ± {math.sqrt(12.5):.2f}"
    assert mean_std([4.25]) == "4.25"
    assert mean_std([None]) == mean_std([]) == "-"


def test_markdown_table_has_a_header_rule_and_one_line_per_row():
    text = markdown_table(["row", "1/30"], [["a", "1.0 ± 0.1"], ["b", 2]])
    assert text.splitlines() == ["| row | 1/30 |", "|---|---|", "| a | 1.0 ± 0.1 |", "| b | 2 |"]
