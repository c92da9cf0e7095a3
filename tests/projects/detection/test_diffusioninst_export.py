"""ONNX export of DiffusionInst: onnxruntime's detections and masks equal the eager model's
(same labels, box IoU > 0.99, scores within 2e-3, mask IoU >= 0.98), given the same draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from diffvision.engine.defaults import load_config  # noqa: E402
from projects.detection.diffusioninst import build_model  # noqa: E402
from projects.detection.export import OnnxDetector, export_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = load_config(str(ROOT / "tests/configs/diffinst_tiny.yaml"), ["MODEL.WEIGHTS", ""])
    m = build_model(cfg, with_criterion=False).eval()
    with torch.no_grad():  # scores around the renewal threshold: some boxes renewed, some kept
        m.head.head_series[-1].class_logits.bias.fill_(0.0)
        m.head.mask_head[-1].bias.fill_(0.3)  # masks neither empty nor full
    return m


@pytest.mark.parametrize("steps", [2])  # the step ensemble and renewal too; ~5 min on CPU
def test_onnx_masks_match_eager(model, tmp_path, steps):
    path = export_onnx(model, tmp_path / "inst.onnx", num_boxes=8, steps=steps, image_hw=(64, 64))
    runner = OnnxDetector(path)
    assert "mask_probs" in runner.output_names
    rng = np.random.default_rng(0)
    for shape in [(64, 64, 3), (80, 56, 3)]:
        image = (rng.random(shape) * 255).astype(np.uint8)
        eager = model.predict([image], num_boxes=8, steps=steps, seed=5)[0]
        onnx = runner.predict([image], seed=5)[0]
        assert len(eager["boxes"]) == len(onnx["boxes"]) > 0
        assert torch.equal(eager["labels"], onnx["labels"])
        assert torch.allclose(eager["scores"], onnx["scores"], atol=2e-3)
        assert (box_iou(eager["boxes"], onnx["boxes"]).diagonal() > 0.99).all()
        assert onnx["masks"].shape == eager["masks"].shape == (len(eager["boxes"]), *shape[:2])
        inter = (eager["masks"] & onnx["masks"]).flatten(1).sum(1).float()
        union = (eager["masks"] | onnx["masks"]).flatten(1).sum(1).float()
        assert union.sum() > 0
        assert ((inter / union.clamp(min=1))[union > 0] >= 0.98).all()
