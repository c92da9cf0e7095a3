"""The detection tools on a DiffusionInst model (tiny, random weights, CPU): ``tools/demo.py``
draws masks and writes them as COCO RLE in ``--json``, ``tools/export.py`` writes a mask model
that ``tools/demo.py --onnx`` runs with the eager masks, ``tools/sweep_boxes_steps.py`` reports
mask AP, and test-time augmentation is refused in one line where it would run.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.ops import box_iou

from diffvision.data.toy_detection import ensure_toy_detection
from diffvision.evaluation.coco_evaluation import demo_json_to_coco_results
from tests.tool_helpers import (
    REPO,
    datasets_under,
    drop_tool_log_handlers,
    export_through_tool,
    load_tool,
    one_line_error,
)

CONFIG = str(REPO / "projects/detection/diffinst_toy.yaml")
OPTS = ["MODEL.DEVICE", "cpu", "MODEL.DiffusionInst.NUM_PROPOSALS", "8",
        "MODEL.DiffusionInst.NUM_HEADS", "1", "MODEL.DiffusionInst.MASK_BRANCH_DIM", "8",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "TEST.IMS_PER_BATCH", "2",
        "MODEL.DiffusionInst.SAMPLE_STEP", "1", "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip
THRESHOLD = 0.3


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with datasets_under(tmp_path_factory.mktemp("diffinst_tools")) as tmp:
        yield _make_env(tmp)


def _make_env(tmp):
    import projects  # noqa: F401
    from diffvision.engine.defaults import load_config
    from projects.detection.diffusioninst import build_model

    root = ensure_toy_detection(
        tmp / "datasets" / "toy_instances", sizes={"train": 1, "val": 3}, masks=True
    )
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, OPTS), with_criterion=False).eval()
    with torch.no_grad():  # scores around the threshold, masks neither empty nor full
        model.head.head_series[-1].class_logits.bias.add_(2.0)
        model.head.mask_head[-1].bias.fill_(0.3)
    onnx = export_through_tool(model, tmp, CONFIG, OPTS, boxes=8)
    images = sorted((root / "val").glob("*.png"))
    return {"tmp": tmp, "model": model, "onnx": onnx, "images": images}


def _rgb(path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])


def _demo(env, name: str, source: list[str]) -> dict:
    out = env["tmp"] / name
    out.mkdir()
    args = ["--input", *map(str, env["images"]), "--output", str(out / "drawn"),
            "--json", str(out / "det.json"), "--confidence-threshold", str(THRESHOLD),
            "--seed", "3"]  # fmt: skip
    assert load_tool("demo").main([*args, *source]) == 0
    return json.loads((out / "det.json").read_text())


def _decoded(record: dict) -> np.ndarray:
    h, w = record["height"], record["width"]
    rles = [d["segmentation"] for d in record["detections"]]
    for rle in rles:
        assert rle["size"] == [h, w] and isinstance(rle["counts"], str)
    return np.stack([mask_utils.decode(r) for r in rles]) if rles else np.zeros((0, h, w))


def test_demo_json_carries_the_predicted_masks_as_rle(env):
    demo_json = _demo(env, "eager", ["--config", CONFIG, *OPTS, "MODEL.WEIGHTS",
                                     str(env["tmp"] / "model.pth")])  # fmt: skip
    records = demo_json["images"]
    total = 0
    for path, record in zip(env["images"], records, strict=True):
        (out,) = env["model"].predict(_rgb(path), seed=3)  # the demo seeds every image alike
        keep = out["scores"] > THRESHOLD
        expected = out["masks"][keep].numpy()
        assert len(record["detections"]) == len(expected)
        np.testing.assert_array_equal(_decoded(record), expected)
        total += int(expected.sum())
    assert total > 0  # some masks are not empty
    # the COCO results made from it keep each mask (for a segm evaluation)
    gt = json.loads((env["images"][0].parents[1] / "annotations/instances_val.json").read_text())
    results = demo_json_to_coco_results(demo_json, gt)
    rles = [d["segmentation"] for r in records for d in r["detections"]]
    assert [r["segmentation"] for r in results] == rles and rles


def test_drawn_masks_are_a_translucent_fill_in_the_class_colour():
    demo = load_tool("demo")
    image = np.full((40, 50, 3), 100, np.uint8)
    masks = torch.zeros(2, 40, 50, dtype=torch.bool)
    masks[0, 20:30, 10:20] = True
    masks[1, 25:35, 15:25] = True  # overlaps the first: drawn over it
    det = {"boxes": torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]]), "scores": torch.ones(2),
           "labels": torch.tensor([0, 1]), "masks": masks}  # fmt: skip
    canvas = demo.draw(image, det, ["a", "b"])
    c0, c1 = (np.array(demo.color_of(k), np.float64) for k in (0, 1))
    np.testing.assert_array_equal(canvas[22, 12], np.round(0.5 * 100 + 0.5 * c0))
    np.testing.assert_array_equal(canvas[32, 22], np.round(0.5 * 100 + 0.5 * c1))
    both = np.round(0.5 * np.round(0.5 * 100 + 0.5 * c0) + 0.5 * c1)
    np.testing.assert_array_equal(canvas[27, 17], both)
    np.testing.assert_array_equal(canvas[38, 45], [100, 100, 100])  # outside every mask


def test_export_writes_a_mask_model_that_the_onnx_demo_runs_like_eager(env):
    from projects.detection.export import OnnxDetector

    runner = OnnxDetector(env["onnx"])
    assert runner.metadata["meta_architecture"] == "DiffusionInst" and runner.metadata["masks"]
    assert "mask_probs" in runner.output_names
    eager = _demo(env, "eager_for_onnx", ["--config", CONFIG, *OPTS, "MODEL.WEIGHTS",
                                          str(env["tmp"] / "model.pth")])["images"]  # fmt: skip
    onnx = _demo(env, "onnx", ["--onnx", str(env["onnx"])])["images"]
    compared = 0
    for a, b in zip(eager, onnx, strict=True):
        assert [d["category_id"] for d in a["detections"]] == [
            d["category_id"] for d in b["detections"]
        ]
        boxes = [torch.tensor([[*d["bbox"][:2], d["bbox"][0] + d["bbox"][2],
                                d["bbox"][1] + d["bbox"][3]] for d in r["detections"]])
                 for r in (a, b)]  # fmt: skip
        if len(boxes[0]):
            assert (box_iou(*boxes).diagonal() > 0.99).all()
        ma, mb = _decoded(a).astype(bool), _decoded(b).astype(bool)
        inter = (ma & mb).reshape(len(ma), -1).sum(1)
        union = (ma | mb).reshape(len(ma), -1).sum(1)
        assert ((inter / np.maximum(union, 1))[union > 0] >= 0.98).all()
        compared += int((union > 0).sum())
    assert compared > 0


def test_sweep_reports_mask_ap(env):
    sweep = load_tool("sweep_boxes_steps")
    out = env["tmp"] / "sweep"
    try:
        rows = sweep.main(
            ["--config", CONFIG, "--boxes", "8", "--steps", "1", "--max-images", "2",
             "--output-dir", str(out), *OPTS, "MODEL.WEIGHTS", str(env["tmp"] / "model.pth")]
        )  # fmt: skip
    finally:
        drop_tool_log_handlers()
    metrics = rows[0]["metrics"]
    assert "segm/AP" in metrics and "bbox/AP" in metrics
    table = (out / "sweep.md").read_text()
    assert "| boxes | steps | AP | AP50 | AP75 | mask AP | mask AP50 | mask AP75 |" in table
    assert f"| {metrics['segm/AP']:.1f} |" in table.splitlines()[-1]


def test_evaluation_with_test_time_augmentation_is_one_error_line(env, capsys):
    train_net = load_tool("train_net")
    argv = ["--config", CONFIG, "--eval-only", *OPTS, "OUTPUT_DIR", str(env["tmp"] / "tta"),
            "MODEL.WEIGHTS", str(env["tmp"] / "model.pth"), "TEST.AUG.ENABLED", "True"]  # fmt: skip
    try:
        status = train_net.cli(argv)
    finally:
        drop_tool_log_handlers()
    one_line_error(capsys, status, "TEST.AUG.ENABLED True: test-time augmentation merges boxes")
