"""``tools/demo.py --json``: every input's detections, checked against the model's ``predict``.

The eager demo's records equal ``model.predict(image, seed)`` above the threshold (boxes as
[x, y, w, h] of the same float32 corners); the ``--onnx`` demo's equal the exported file's
``OnnxDetector.predict``, which matches the eager model's detections one by one. Images, a folder,
an unreadable file and video frames all land in one file; its COCO conversion matches by name.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from diffvision.data.toy_detection import ensure_toy_detection
from diffvision.evaluation.coco_evaluation import demo_json_to_coco_results
from tests.tool_helpers import REPO, datasets_under, export_through_tool, load_tool

CONFIG = str(REPO / "projects/detection/diffdet_toy.yaml")
OPTS = ["MODEL.DEVICE", "cpu", "MODEL.DiffusionDet.NUM_PROPOSALS", "16",
        "MODEL.DiffusionDet.NUM_HEADS", "1", "INPUT.MIN_SIZE_TEST", "96",
        "INPUT.MAX_SIZE_TEST", "160"]  # fmt: skip
THRESHOLD = 0.3


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with datasets_under(tmp_path_factory.mktemp("demo_json")) as tmp:
        yield _make_env(tmp)


def _make_env(tmp):
    import projects  # noqa: F401
    from diffvision.engine.defaults import load_config
    from projects.detection.build import build_model

    root = ensure_toy_detection(tmp / "datasets" / "toy_detection", sizes={"train": 1, "val": 3})
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, OPTS), with_criterion=False).eval()
    with torch.no_grad():  # scores around the threshold: some boxes kept, some dropped
        model.head.head_series[-1].class_logits.bias.add_(2.0)
    onnx = export_through_tool(model, tmp, CONFIG, OPTS, boxes=16)
    images = sorted((root / "val").glob("*.png"))
    (tmp / "folder").mkdir()
    for path in images[1:]:
        (tmp / "folder" / path.name).write_bytes(path.read_bytes())
    (tmp / "broken.png").write_bytes(b"not an image")
    writer = cv2.VideoWriter(str(tmp / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (160, 128))
    for path in images[:2]:
        writer.write(cv2.resize(cv2.imread(str(path)), (160, 128)))
    writer.release()
    return {"tmp": tmp, "model": model, "onnx": onnx, "images": images}


def _expected(predict, rgb) -> list[dict]:
    (out,) = predict(rgb)
    keep = out["scores"] > THRESHOLD
    rows = []
    for box, score, label in zip(out["boxes"][keep].tolist(), out["scores"][keep].tolist(),
                                 out["labels"][keep].tolist()):  # fmt: skip
        rows.append(([box[0], box[1], box[2] - box[0], box[3] - box[1]], score, label))
    return rows


def _got(record) -> list[tuple]:
    return [(d["bbox"], d["score"], d["category_id"]) for d in record["detections"]]


def _rgb(path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_json_holds_the_predictions_of_every_image(env, backend):
    tmp = env["tmp"]
    out = tmp / f"{backend}.json"
    if backend == "eager":
        source = ["--config", CONFIG]
        tail = [*OPTS, "MODEL.WEIGHTS", str(tmp / "model.pth")]
        model = env["model"]
    else:
        from projects.detection.export import OnnxDetector

        source, tail, model = ["--onnx", str(env["onnx"])], [], OnnxDetector(env["onnx"])
    demo = load_tool("demo")
    demo.main([*source, "--input", str(env["images"][0]), str(tmp / "folder"),
               str(tmp / "broken.png"), "--json", str(out), "--confidence-threshold",
               str(THRESHOLD), *tail])  # fmt: skip
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["categories"]] == ["rectangle", "ellipse", "triangle", "cross"]
    records = data["images"]
    assert [r["file_name"] for r in records] == [
        str(env["images"][0]), *(str(tmp / "folder" / p.name) for p in env["images"][1:]),
        str(tmp / "broken.png"),
    ]  # fmt: skip
    assert "error" in records[-1] and "detections" not in records[-1]
    total = 0
    for record, path in zip(records, env["images"]):
        rgb = _rgb(path)
        assert (record["height"], record["width"]) == rgb.shape[:2]
        want = _expected(lambda im: model.predict(im, seed=0), rgb)
        assert _got(record) == pytest.approx(want) if want else _got(record) == []
        names = {d["category_name"] for d in record["detections"]}
        assert names <= {c["name"] for c in data["categories"]}
        total += len(want)
    assert total > 0, "a test without detections compares nothing"
    if backend == "onnx":  # the exported file agrees with the eager model, box by box
        for record, path in zip(records, env["images"]):
            eager = _expected(lambda im: env["model"].predict(im, seed=0, steps=1), _rgb(path))
            assert len(record["detections"]) == len(eager)


def test_video_frames_and_coco_conversion(env):
    tmp = env["tmp"]
    demo = load_tool("demo")
    demo.main(["--config", CONFIG, "--video-input", str(tmp / "clip.avi"), "--json",
               str(tmp / "video.json"), "--output", str(tmp / "video_out.avi"),
               "--confidence-threshold", str(THRESHOLD), *OPTS,
               "MODEL.WEIGHTS", str(tmp / "model.pth")])  # fmt: skip
    records = json.loads((tmp / "video.json").read_text())["images"]
    assert [r["frame"] for r in records] == [0, 1]
    capture = cv2.VideoCapture(str(tmp / "clip.avi"))
    for record in records:
        ok, frame = capture.read()
        assert ok and (record["height"], record["width"]) == (128, 160)
        want = _expected(lambda im: env["model"].predict(im, seed=0), frame[:, :, ::-1].copy())
        assert _got(record) == pytest.approx(want) if want else _got(record) == []
    capture.release()

    gt = json.loads((env["images"][0].parents[1] / "annotations/instances_val.json").read_text())
    demo_json = json.loads((tmp / "eager.json").read_text())
    results = demo_json_to_coco_results(demo_json, gt)
    by_name = {im["file_name"].split("/")[-1]: im["id"] for im in gt["images"]}
    first = demo_json["images"][0]
    mine = [r for r in results if r["image_id"] == by_name[env["images"][0].name]]
    assert [r["bbox"] for r in mine] == [d["bbox"] for d in first["detections"]]
    assert all(r["category_id"] == d["category_id"] + 1 for r, d in zip(mine, first["detections"]))


def test_json_path_errors_are_one_line(env, capsys):
    from diffvision.engine.cli import run_main

    tmp = env["tmp"]
    demo = load_tool("demo")
    base = ["--onnx", str(env["onnx"]), "--input", str(env["images"][0])]
    assert run_main(demo.main, [*base, "--json", str(tmp / "missing" / "d.json")]) == 2
    assert "folder" in capsys.readouterr().err
    (tmp / "done.json").write_text("{}")
    assert run_main(demo.main, [*base, "--json", str(tmp / "done.json")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert (tmp / "done.json").read_text() == "{}"
