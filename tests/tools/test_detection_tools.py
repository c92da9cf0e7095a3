"""Smoke tests of the detection tools on a tiny toy DiffusionDet (random weights, CPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from diffvision.data.toy_detection import ensure_toy_detection

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "projects/detection/diffdet_toy.yaml")
# smaller and faster than the toy config: 1 head stage, 64 px test images
TINY = [
    "MODEL.DiffusionDet.NUM_HEADS", "1",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "TEST.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def toy_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    ensure_toy_detection(tmp_path / "datasets" / "toy_detection", sizes={"train": 2, "val": 4})
    return tmp_path


@pytest.fixture()
def checkpoint(toy_env):
    import projects  # noqa: F401
    from diffvision.engine.defaults import load_config
    from projects.detection.build import build_model

    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, TINY), with_criterion=False)
    path = toy_env / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def test_sweep_writes_table_json_and_plot(toy_env, checkpoint):
    sweep = load_tool("sweep_boxes_steps")
    out = toy_env / "sweep"
    rows = sweep.main(
        ["--config", CONFIG, "--boxes", "10", "--steps", "1", "2", "--max-images", "3",
         "--clock", "cpu",
         "--output-dir", str(out), *TINY, "MODEL.WEIGHTS", checkpoint]
    )  # fmt: skip
    assert [(r["boxes"], r["steps"]) for r in rows] == [(10, 1), (10, 2)]
    assert all(r["images"] == 3 and r["ms_per_image"] > 0 for r in rows)  # 2 batches of 2, cut
    table = (out / "sweep.md").read_text()
    assert table.count("\n| 10 |") == 2 and "| boxes | steps | AP |" in table
    assert len(json.loads((out / "sweep.json").read_text())["rows"]) == 2
    assert cv2.imread(str(out / "sweep.png")) is not None


def test_demo_images_and_video_honour_the_threshold(toy_env, checkpoint, monkeypatch):
    demo = load_tool("demo")
    image = np.asarray(cv2.imread(str(toy_env / "datasets/toy_detection/val/000001.png")))
    video = toy_env / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, image.shape[1::-1])
    for _ in range(3):
        writer.write(image)
    writer.release()

    thresholds = []
    real_detect = demo.detect

    def spy(model, rgb, threshold, seed):
        det = real_detect(model, rgb, threshold, seed)
        thresholds.append(threshold)
        assert (det["scores"] > threshold).all()
        return det

    monkeypatch.setattr(demo, "detect", spy)
    common = ["--config", CONFIG, "--confidence-threshold", "0.001"]
    tail = [*TINY, "MODEL.WEIGHTS", checkpoint, "MODEL.DiffusionDet.NUM_PROPOSALS", "10"]
    demo.main([*common, "--input", str(toy_env / "datasets/toy_detection/val/00000[12].png"),
               "--output", str(toy_env / "out"), *tail])  # fmt: skip
    assert len(list((toy_env / "out").glob("*.jpg"))) == 2
    demo.main([*common, "--video-input", str(video), "--output", str(toy_env / "det.avi"),
               "--max-frames", "2", *tail])  # fmt: skip
    assert thresholds == [0.001] * 4  # 2 images + 2 video frames, same threshold
    capture = cv2.VideoCapture(str(toy_env / "det.avi"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    capture.release()


def test_draw_labels_and_class_names(toy_env):
    demo = load_tool("demo")
    canvas = np.zeros((60, 80, 3), dtype=np.uint8)
    det = {
        "boxes": torch.tensor([[10.0, 20.0, 50.0, 50.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
    }
    out = demo.draw(canvas, det, ["a", "b"])
    assert out[35, 10].any() and not canvas.any()  # box edge drawn on a copy


def test_benchmark_quick_runs(toy_env):
    bench = load_tool("benchmark_detection")
    table = bench.main(
        ["--config", CONFIG, "--size", "64", "80", "--boxes", "10", "--steps", "1",
         "--repeats", "1", "--train-batch", "1", "--matcher-gts", "3",
         "--output", str(toy_env / "bench.md"), *TINY, "MODEL.DiffusionDet.NUM_PROPOSALS", "10"]
    )  # fmt: skip
    assert "| 10 | 1 |" in table and "ms/iter" in table and "| 10 | 3 |" in table
    raw = json.loads((toy_env / "bench.json").read_text())
    assert len(raw["inference"]) == 1 and raw["train"]["ms_per_iter"] > 0


def test_demo_detect_keeps_exactly_the_scores_above_the_threshold(toy_env, checkpoint):
    """The threshold is cut inside the score range, so ignoring it would keep too many boxes."""
    import projects  # noqa: F401
    from diffvision.engine.defaults import load_config
    from diffvision.engine.weights import load_weights
    from projects.detection.build import build_model

    demo = load_tool("demo")
    model = build_model(load_config(CONFIG, TINY), with_criterion=False).eval()
    load_weights(model, checkpoint)
    rgb = np.ascontiguousarray(
        cv2.imread(str(toy_env / "datasets/toy_detection/val/000001.png"))[..., ::-1]
    )
    everything = demo.detect(model, rgb, 0.0, 0)
    threshold = float(everything["scores"].median())
    kept = demo.detect(model, rgb, threshold, 0)
    above = everything["scores"] > threshold
    assert 0 < int(above.sum()) < len(above)
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(kept[key], everything[key][above])


def test_benchmark_compare_precision_runs(toy_env):
    bench = load_tool("benchmark_detection")
    table = bench.main(
        ["--compare-precision", "--models", "toy", "--toy-size", "64", "80", "--batches", "1",
         "--boxes", "10",
         "--steps", "1", "--repeats", "1", "--warmup", "0", "--precisions", "fp32", "bf16",
         "--output", str(toy_env / "precision.md")]
    )  # fmt: skip
    assert "| toy | 1 | 10 | 1 |" in table and "bf16 ratio" in table
    assert table.strip().splitlines()[-1].startswith("- toy, batch 1: bf16")  # geomean last
    raw = json.loads((toy_env / "precision.json").read_text())
    [cell] = raw["precision"]
    assert cell["ratio"]["fp32"] == 1.0 and cell["ms"]["bf16"] > 0
