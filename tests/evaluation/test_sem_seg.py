from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffvision.evaluation.sem_seg import (
    SemSegEvaluator,
    iou_from_confusion,
    sliding_window_inference,
    whole_image_inference,
)


def test_iou_against_hand_computed_values(tmp_path):
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
    ev = SemSegEvaluator(num_classes=4, class_names=["a", "b", "c", "d"], output_dir=tmp_path)
    ev.process_image(pred, gt, image=np.zeros((3, 2, 4), np.uint8), name="x")
    # Ignored GT pixels (last two) are never counted, whatever was predicted there.
    # class 0: TP1 FN1 FP1 -> 1/3; class 1: TP2 FP1 -> 2/3; class 2: TP1 FN1 -> 1/2; class 3 absent.
    m = ev.evaluate()
    assert m["sem_seg/IoU-a"] == pytest.approx(100 / 3)
    assert m["sem_seg/IoU-b"] == pytest.approx(200 / 3)
    assert m["sem_seg/IoU-c"] == pytest.approx(50)
    assert math.isnan(m["sem_seg/IoU-d"])
    assert m["sem_seg/mIoU"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["sem_seg/pACC"] == pytest.approx(100 * 4 / 6)
    assert (tmp_path / "x.png").is_file()
    # Accumulation is dataset-level: a second image changes the counts, not an average.
    ev.process_image(np.array([[3]]), np.array([[3]]))
    assert ev.evaluate()["sem_seg/IoU-d"] == pytest.approx(100)
    ev.reset()
    assert ev.confusion.sum() == 0


def test_confusion_helper_and_validation():
    out = iou_from_confusion(np.array([[3, 1], [0, 0]]))
    np.testing.assert_allclose(out["iou"], [0.75, 0.0])
    ev = SemSegEvaluator(num_classes=2)
    with pytest.raises(ValueError, match="outside"):
        ev.process_image(np.zeros((1, 2)), np.array([[0, 5]]))
    with pytest.raises(ValueError, match="shape"):
        ev.process_image(np.zeros((1, 3)), np.zeros((1, 2)))


def test_sliding_window_equals_whole_for_translation_equivariant_model():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, kernel_size=1)  # 1x1: no border effects, exactly equivariant
    image = torch.randn(2, 3, 37, 50)
    whole = whole_image_inference(conv, image)
    slide = sliding_window_inference(conv, image, window=(16, 20), stride=(10, 13), num_classes=5)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="stride"):
        sliding_window_inference(conv, image, window=(16, 20), stride=(20, 13), num_classes=5)
